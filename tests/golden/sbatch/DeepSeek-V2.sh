#!/bin/bash
# Rendered by benchlib from the resolved run DeepSeek-V2-TP1PP16EP8VPP2-bf16; edit the configs, not this file.
#SBATCH --job-name=DeepSeek-V2-TP1PP16EP8VPP2-bf16
#SBATCH --nodes=32
#SBATCH --ntasks-per-node=8
#SBATCH --time=00:20:00
#SBATCH --output=/runs/DeepSeek-V2/20260101-000000-DeepSeek-V2-TP1PP16EP8VPP2-bf16/logs/slurm-%j.out
#SBATCH --gpus-per-node=8
#SBATCH --account=my_account
#SBATCH --partition=batch
#SBATCH --signal=B:USR1@120
#SBATCH --exclusive
# No `set -x`: the environment may hold secrets (WANDB_API_KEY is inherited, never rendered).
set -euo pipefail

RUN_DIR=/runs/DeepSeek-V2/20260101-000000-DeepSeek-V2-TP1PP16EP8VPP2-bf16
LOG=/runs/DeepSeek-V2/20260101-000000-DeepSeek-V2-TP1PP16EP8VPP2-bf16/logs/train.log
SUITE_ROOT=@SUITE_ROOT@
PYTHON=python3
MARKER="$RUN_DIR/INCOMPLETE"
mkdir -p "$RUN_DIR/logs"
touch "$LOG"
LOG_START=$(stat -c %s "$LOG")  # a requeued job appends: only what this attempt writes counts

note() { printf '[bench %s] %s\n' "$(date -u +%FT%TZ)" "$*"; }
mark_incomplete() { printf 'job %s: %s (%s)\n' "${SLURM_JOB_ID:-?}" "$1" "$(date -u +%FT%TZ)" >> "$MARKER"; }
# The marker stays unless training is seen to finish: a job killed at any point leaves it behind.
: > "$MARKER"
mark_incomplete "started; removed when the training step finishes every iteration"

export PYTHONPATH="$SUITE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1
export DATA=mock
export NCCL_NVLS_ENABLE=0
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
# Rendezvous on the allocation's first node; every task takes its rank from Slurm (below).
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_ADDR
export MASTER_PORT=29500

# One task per GPU (--ntasks-per-node above), output labelled with the task's rank.
SRUN_ARGS=(--label --kill-on-bad-exit=1)
# shellcheck disable=SC2054  # the commas separate mounts inside one argument
CONTAINER_ARGS=(
  --container-image=/images/megatron-moe-bench.sqsh
  --container-mounts=@SUITE_ROOT@:@SUITE_ROOT@,/runs:/runs,/lustre:/lustre
  --container-workdir=@SUITE_ROOT@
  --no-container-mount-home
  --mpi=pmix
)

# Time-limit warning (--signal=B:USR1 above): ask the training step to stop cleanly with SIGTERM
# (Megatron's --exit-signal-handler finishes the iteration, saves if --save is set, and exits).
CUT=""
# shellcheck disable=SC2329  # the two handlers run through `trap`
on_time_limit() {
  CUT="time limit"
  mark_incomplete "stopped by the time limit (120 s warning before --time=00:20:00)"
  note "time limit in about 120 s: sending SIGTERM to the training step"
  # Signals the job's steps, not this shell; without it Slurm still stops the step at the limit.
  scancel --signal=TERM "$SLURM_JOB_ID" || note "could not signal the step (scancel failed)"
}
# SIGTERM to this shell: the job was cancelled, or the limit came before the step stopped.
# shellcheck disable=SC2329
on_terminate() {
  mark_incomplete "terminated by Slurm (cancelled, or killed at the time limit)"
  note "terminated by Slurm"
  exit 143
}
trap on_time_limit USR1
trap on_terminate TERM INT

note "job ${SLURM_JOB_ID:-?}: $SLURM_JOB_NUM_NODES node(s), $SLURM_NTASKS task(s), master $MASTER_ADDR:$MASTER_PORT, log $LOG"
# GPU calibration (CALIBRATE=0 turns it off): every rank measures its GPU into calibration/ (seconds).
# Best effort: a failure is noted and training goes on. Its own port: the training rendezvous follows.
note "calibrating the GPUs into $RUN_DIR/calibration"
# shellcheck disable=SC2016
srun "${SRUN_ARGS[@]}" "${CONTAINER_ARGS[@]}" \
  bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS MASTER_PORT=$((MASTER_PORT + 1)); exec "$@"' task \
  "$PYTHON" -m benchlib.megatron.calibrate --out-dir "$RUN_DIR/calibration" \
  > "$RUN_DIR/logs/calibration.log" 2>&1 || note "calibration failed (see logs/calibration.log); training goes on"
status=0
for REPEAT in $(seq 1 1); do  # (body not indented: it is the one step)
note "launch $REPEAT of 1 (REPEATS)"
# The step's pipeline runs in the background so the traps above run while it does (bash runs a
# trap only after a foreground pipeline ends). With pipefail its status is srun's, i.e. training's.
# shellcheck disable=SC2016  # $SLURM_PROCID etc. expand in each task, not here
(
  srun "${SRUN_ARGS[@]}" "${CONTAINER_ARGS[@]}" \
    bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' task \
    python3 -m benchlib.megatron.driver \
      --tensor-model-parallel-size 1 \
      --pipeline-model-parallel-size 16 \
      --expert-model-parallel-size 8 \
      --expert-tensor-parallel-size 1 \
      --context-parallel-size 1 \
      --micro-batch-size 1 \
      --global-batch-size 1024 \
      --seq-length 4096 \
      --num-layers 60 \
      --use-distributed-optimizer \
      --overlap-grad-reduce \
      --overlap-param-gather \
      --hidden-size 5120 \
      --ffn-hidden-size 12288 \
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
      --moe-layer-freq '([0]*1+[1]*59)' \
      --num-experts 160 \
      --moe-router-topk 6 \
      --moe-ffn-hidden-size 1536 \
      --moe-shared-expert-intermediate-size 3072 \
      --moe-router-score-function softmax \
      --moe-router-pre-softmax \
      --moe-router-num-groups 8 \
      --moe-router-group-topk 3 \
      --moe-router-topk-scaling-factor 16.0 \
      --moe-router-load-balancing-type seq_aux_loss \
      --moe-aux-loss-coeff 3e-3 \
      --moe-router-dtype fp32 \
      --lr 0.00024 \
      --min-lr 2.4e-05 \
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
      --moe-token-dispatcher-type alltoall \
      --moe-grouped-gemm \
      --decoder-first-pipeline-num-layers 2 \
      --decoder-last-pipeline-num-layers 2 \
      --num-virtual-stages-per-pipeline-rank 2 \
      --recompute-granularity selective \
      --recompute-modules mla_up_proj moe layernorm \
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
while :; do
  wait "$STEP_PID" && status=0 || status=$?
  kill -0 "$STEP_PID" 2>/dev/null || break  # still running: a trapped signal woke us up
done
if [ "$status" -ne 0 ] || [ -n "$CUT" ]; then break; fi  # a failed or cut launch ends the repeats
done
trap '' USR1

# Verdict. Megatron exits 0 also when it stops early (signal, --exit-duration-in-mins): its
# "exiting program after ..." line in this attempt's log says so.
if [ -n "$CUT" ]; then
  note "training step stopped at the time limit (exit status $status)"
elif [ "$status" -ne 0 ]; then
  mark_incomplete "training step failed with exit status $status"
elif tail -c +$((LOG_START + 1)) "$LOG" | grep "exiting program after" >/dev/null; then
  CUT="early exit"
  mark_incomplete "training stopped before its last iteration (see 'exiting program after' in the log)"
else
  rm -f "$MARKER"
fi

# result.json from the log (benchlib.metrics) and the step's exit status (and a time-limit cut):
# the log alone cannot tell a step that ended without an end marker, and Slurm's time-limit line
# comes only after this; `benchlib status` reconciles with Slurm's final state later. Best
# effort: never changes the job's exit status.
note "collecting $RUN_DIR/result.json"
COLLECT_ARGS=(--exit-status "$status" --source "sbatch job")
if [ "$CUT" = "time limit" ]; then COLLECT_ARGS+=(--ended timeout); fi
if srun --nodes=1 --ntasks=1 "${CONTAINER_ARGS[@]}" "$PYTHON" -m benchlib collect "$RUN_DIR" "${COLLECT_ARGS[@]}"; then
  note "result written"
else
  note "collect reported an unfinished or unparsable run (see above); the job's status stays training's"
fi

if [ "$CUT" = "time limit" ]; then
  # Stay until the limit so accounting records TIMEOUT (about the 120 s warning; Slurm may
  # send the warning up to a minute early).
  note "waiting for the time limit so Slurm records this job as TIMEOUT"
  while :; do sleep 1 & wait $! || true; done
fi
if [ "$status" -eq 0 ] && [ -n "$CUT" ]; then
  status=1  # stopped early on its own: not a finished run
fi
exit "$status"
