#!/bin/bash
# Rendered by benchlib from the resolved run DeepSeek-V2-Lite-TP1PP1EP8-bf16; edit the configs, not this file.
# No `set -x`: the environment may hold secrets (WANDB_API_KEY is inherited, never rendered).
set -euo pipefail

RUN_DIR=/runs/DeepSeek-V2-Lite/20260101-000000-DeepSeek-V2-Lite-TP1PP1EP8-bf16
LOG=/runs/DeepSeek-V2-Lite/20260101-000000-DeepSeek-V2-Lite-TP1PP1EP8-bf16/logs/train.log
SUITE_ROOT=@SUITE_ROOT@
PYTHON=python3
mkdir -p "$RUN_DIR/logs"
echo "started $(date -u +%FT%TZ)" > "$RUN_DIR/INCOMPLETE"

note() { printf '[bench %s] %s\n' "$(date -u +%FT%TZ)" "$*" | tee -a "$LOG" >&2; }

export PYTHONPATH="$SUITE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export COMPILE=0
export CUDA_DEVICE_MAX_CONNECTIONS=1
export DATA=mock
export FAST_OPS=1
export FAST_OPTIMIZER=1
export NCCL_NVLS_ENABLE=0
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCH_NCCL_AVOID_RECORD_STREAMS=1

export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}" PET_NODE_RANK=0
# The launcher sets $MASTER_PORT to a port free at launch unless the user set it.
MASTER_PORT="${MASTER_PORT:-29500}"
LAUNCHER=()
export MASTER_PORT

# Every process of this run carries this token in its environment: torchrun starts each worker
# in a session of its own, so neither the process group nor the parent chain finds them all.
BENCH_RUN_TOKEN="$$-$(date +%s%N)"
export BENCH_RUN_TOKEN
run_pids() {
  # /proc/PID/environ is the environment a process was exec'd with: this shell and its subshells
  # predate the token, and grep runs without it, so only the run's programs match.
  local file
  for file in $(env -u BENCH_RUN_TOKEN grep -lzxF "BENCH_RUN_TOKEN=$BENCH_RUN_TOKEN" /proc/[0-9]*/environ 2>/dev/null); do
    file="${file#/proc/}"; echo "${file%/environ}"
  done
}
# SIGTERM to every process of the run, SIGKILL to those still there after the grace period.
stop_run() {
  local pids i
  pids="$(run_pids)"
  [ -n "$pids" ] || return 0
  note "stopping the run's processes (${pids//$'\n'/ }): SIGTERM, SIGKILL after 10 s"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    sleep 0.2
    pids="$(run_pids)"
    [ -n "$pids" ] || return 0
  done
  note "still running after 10 s, SIGKILL: ${pids//$'\n'/ }"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
}
ENDED=""
ENDED_STATUS=0
# shellcheck disable=SC2329  # runs through `trap`
on_interrupt() {
  trap '' INT TERM
  ENDED="cancelled"
  ENDED_STATUS=$2
  note "interrupted by $1: the run is cancelled"
  stop_run
}
trap 'on_interrupt SIGINT 130' INT
trap 'on_interrupt SIGTERM 143' TERM

# GPU calibration (CALIBRATE=0 turns it off): every rank measures its GPU into calibration/ (seconds).
# Best effort: a failure is noted and training goes on. Its own port: the training rendezvous follows.
"${LAUNCHER[@]}" "$PYTHON" -m torch.distributed.run \
  --nnodes=1 --nproc-per-node=8 \
  --master-addr="$MASTER_ADDR" --master-port="$((MASTER_PORT + 1))" \
  -m benchlib.megatron.calibrate --out-dir "$RUN_DIR/calibration" \
  > "$RUN_DIR/logs/calibration.log" 2>&1 || note "calibration failed (see $RUN_DIR/logs/calibration.log); training goes on"

note "rendezvous $MASTER_ADDR:$MASTER_PORT"
status=0
for REPEAT in $(seq 1 1); do  # (body not indented: it is the one launch)
set +e
# In the background, so the traps above run while it does (bash runs a trap only after a
# foreground pipeline ends); with pipefail its status is torchrun's.
(
  "${LAUNCHER[@]}" "$PYTHON" -m torch.distributed.run \
    --nnodes=1 --nproc-per-node=8 \
    --max-restarts=0 --monitor-interval=0.5 \
    --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
    -m benchlib.megatron.driver \
    --tensor-model-parallel-size 1 \
    --pipeline-model-parallel-size 1 \
    --expert-model-parallel-size 8 \
    --expert-tensor-parallel-size 1 \
    --context-parallel-size 1 \
    --micro-batch-size 1 \
    --global-batch-size 512 \
    --seq-length 4096 \
    --num-layers 27 \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --overlap-param-gather \
    --hidden-size 2048 \
    --ffn-hidden-size 10944 \
    --num-attention-heads 16 \
    --multi-latent-attention \
    --kv-lora-rank 512 \
    --qk-head-dim 128 \
    --qk-pos-emb-head-dim 64 \
    --v-head-dim 128 \
    --kv-channels 128 \
    --qk-layernorm \
    --position-embedding-type rope \
    --rope-type yarn \
    --rotary-base 10000 \
    --rotary-scaling-factor 40 \
    --mscale 0.707 \
    --mscale-all-dim 0.707 \
    --normalization RMSNorm \
    --norm-epsilon 1e-6 \
    --swiglu \
    --disable-bias-linear \
    --untie-embeddings-and-output-weights \
    --max-position-embeddings 163840 \
    --vocab-size 102400 \
    --make-vocab-size-divisible-by 128 \
    --moe-layer-freq '([0]*1+[1]*26)' \
    --num-experts 64 \
    --moe-router-topk 6 \
    --moe-ffn-hidden-size 1408 \
    --moe-shared-expert-intermediate-size 2816 \
    --moe-router-score-function softmax \
    --moe-router-pre-softmax \
    --moe-router-topk-scaling-factor 1.0 \
    --moe-router-load-balancing-type seq_aux_loss \
    --moe-aux-loss-coeff 1e-3 \
    --moe-router-dtype fp32 \
    --lr 0.00042 \
    --min-lr 4.2e-05 \
    --lr-decay-style cosine \
    --lr-warmup-fraction 0.1 \
    --weight-decay 0.1 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --init-method-std 0.006 \
    --attention-dropout 0 \
    --hidden-dropout 0 \
    --transformer-impl local \
    --no-persist-layer-norm \
    --no-gradient-accumulation-fusion \
    --no-masked-softmax-fusion \
    --no-rope-fusion \
    --spec benchlib.megatron.spec native_spec \
    --bf16 \
    --moe-token-dispatcher-type alltoall \
    --moe-grouped-gemm \
    --mock-data \
    --tokenizer-type NullTokenizer \
    --train-iters 50 \
    --log-interval 1 \
    --log-throughput \
    --eval-iters 0 \
    --exit-signal-handler \
    --manual-gc \
    --manual-gc-interval 100 \
    2>&1 | tee -a "$LOG"
) &
STEP_PID=$!
status=0
while :; do
  wait "$STEP_PID" && status=0 || status=$?
  kill -0 "$STEP_PID" 2>/dev/null || break  # still running: a trapped signal woke us up
done
set -e
[ -z "$ENDED" ] || break  # interrupted: no further launch
[ "$status" -eq 0 ] || break  # a failed launch ends the repeats
done
set +e
trap '' INT TERM
stop_run  # a rank that outlived torchrun (it should not) does not keep the GPU
set -e

if [ -n "$ENDED" ]; then
  status=$ENDED_STATUS
elif [ "$status" -eq 0 ]; then
  rm -f "$RUN_DIR/INCOMPLETE"
fi
"$PYTHON" -m benchlib collect "$RUN_DIR" --exit-status "$status" --source "interactive launch" ${ENDED:+--ended "$ENDED"} || true
exit "$status"
