#!/bin/bash
# Rendered by benchlib from the resolved run DeepSeek-V3-TP2PP8EP64VPP4-fp8; edit the configs, not this file.
# No `set -x`: the environment may hold secrets (WANDB_API_KEY is inherited, never rendered).
set -euo pipefail

RUN_DIR=/runs/DeepSeek-V3/20260101-000000-DeepSeek-V3-TP2PP8EP64VPP4-fp8
LOG=/runs/DeepSeek-V3/20260101-000000-DeepSeek-V3-TP2PP8EP64VPP4-fp8/logs/train.log
SUITE_ROOT=@SUITE_ROOT@
PYTHON=python3
mkdir -p "$RUN_DIR/logs"
echo "started $(date -u +%FT%TZ)" > "$RUN_DIR/INCOMPLETE"

note() { printf '[bench %s] %s\n' "$(date -u +%FT%TZ)" "$*" | tee -a "$LOG" >&2; }

export PYTHONPATH="$SUITE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1
export DATA=mock
export NCCL_NVLS_ENABLE=0
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCH_NCCL_AVOID_RECORD_STREAMS=1

# Several nodes of an allocation: one torchrun per node through srun, node rank from Slurm.
MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
export MASTER_ADDR
MASTER_PORT="${MASTER_PORT:-29500}"
LAUNCHER=(srun --nodes=128 --ntasks-per-node=1 --kill-on-bad-exit=1 --label bash -c 'export PET_NODE_RANK=$SLURM_NODEID; exec "$@"' node)
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
  --nnodes=128 --nproc-per-node=8 \
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
    --nnodes=128 --nproc-per-node=8 \
    --max-restarts=0 --monitor-interval=0.5 \
    --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
    -m benchlib.megatron.driver \
    --tensor-model-parallel-size 2 \
    --pipeline-model-parallel-size 8 \
    --expert-model-parallel-size 64 \
    --expert-tensor-parallel-size 1 \
    --context-parallel-size 1 \
    --micro-batch-size 1 \
    --global-batch-size 8192 \
    --seq-length 4096 \
    --num-layers 61 \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --overlap-param-gather \
    --hidden-size 7168 \
    --ffn-hidden-size 18432 \
    --num-attention-heads 128 \
    --multi-latent-attention \
    --q-lora-rank 1536 \
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
    --mscale 1.0 \
    --mscale-all-dim 1.0 \
    --normalization RMSNorm \
    --norm-epsilon 1e-6 \
    --swiglu \
    --disable-bias-linear \
    --untie-embeddings-and-output-weights \
    --max-position-embeddings 163840 \
    --vocab-size 129280 \
    --make-vocab-size-divisible-by 128 \
    --moe-layer-freq '([0]*3+[1]*58)' \
    --num-experts 256 \
    --moe-router-topk 8 \
    --moe-ffn-hidden-size 2048 \
    --moe-shared-expert-intermediate-size 2048 \
    --moe-router-score-function sigmoid \
    --moe-router-enable-expert-bias \
    --moe-router-bias-update-rate 1e-3 \
    --moe-router-num-groups 8 \
    --moe-router-group-topk 4 \
    --moe-router-topk-scaling-factor 2.5 \
    --moe-router-load-balancing-type seq_aux_loss \
    --moe-aux-loss-coeff 1e-4 \
    --moe-router-dtype fp32 \
    --mtp-num-layers 1 \
    --mtp-loss-scaling-factor 0.1 \
    --lr 0.00022 \
    --min-lr 2.2e-05 \
    --lr-decay-style cosine \
    --lr-warmup-fraction 0.1 \
    --weight-decay 0.1 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --init-method-std 0.006 \
    --attention-dropout 0 \
    --hidden-dropout 0 \
    --transformer-impl transformer_engine \
    --moe-permute-fusion \
    --bf16 \
    --fp8-format e4m3 \
    --fp8-recipe blockwise \
    --moe-token-dispatcher-type flex \
    --moe-flex-dispatcher-backend deepep \
    --moe-grouped-gemm \
    --overlap-moe-expert-parallel-comm \
    --delay-wgrad-compute \
    --sequence-parallel \
    --pipeline-model-parallel-layout 'Et|(tt|)*30mL' \
    --recompute-granularity selective \
    --recompute-modules mla_up_proj mlp \
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
