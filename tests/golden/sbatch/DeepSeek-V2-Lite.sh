#!/bin/bash
# Rendered by benchlib from the resolved run DeepSeek-V2-Lite-TP1PP1EP8-bf16; edit the configs, not this file.
#SBATCH --job-name=DeepSeek-V2-Lite-TP1PP1EP8-bf16
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --time=00:20:00
#SBATCH --output=/runs/DeepSeek-V2-Lite/20260101-000000-DeepSeek-V2-Lite-TP1PP1EP8-bf16/logs/slurm-%j.out
#SBATCH --signal=B:TERM@120
#SBATCH --gpus-per-node=8
#SBATCH --account=my_account
#SBATCH --partition=batch
#SBATCH --exclusive
# No `set -x`: the environment may hold secrets (WANDB_API_KEY is inherited, never rendered).
set -euo pipefail

RUN_DIR=/runs/DeepSeek-V2-Lite/20260101-000000-DeepSeek-V2-Lite-TP1PP1EP8-bf16
LOG=/runs/DeepSeek-V2-Lite/20260101-000000-DeepSeek-V2-Lite-TP1PP1EP8-bf16/logs/train.log
SUITE_ROOT=@SUITE_ROOT@
mkdir -p "$RUN_DIR/logs"
# Present until the training step exits 0: a run cut by the time limit or a crash keeps it.
echo "job ${SLURM_JOB_ID:-?} started $(date -u +%FT%TZ)" > "$RUN_DIR/INCOMPLETE"

export PYTHONPATH="$SUITE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1
export NCCL_NVLS_ENABLE=0
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_ADDR
export MASTER_PORT=29500

# One task per GPU; each task takes its rank from Slurm.
SRUN_ARGS=(--label --kill-on-bad-exit=1 --mpi=pmix)
SRUN_ARGS+=(--container-image=/images/megatron-moe-bench.sqsh)
SRUN_ARGS+=(--container-mounts=@SUITE_ROOT@:@SUITE_ROOT@,/runs/DeepSeek-V2-Lite/20260101-000000-DeepSeek-V2-Lite-TP1PP1EP8-bf16:/runs/DeepSeek-V2-Lite/20260101-000000-DeepSeek-V2-Lite-TP1PP1EP8-bf16,/lustre:/lustre)
SRUN_ARGS+=(--container-workdir=@SUITE_ROOT@ --no-container-mount-home)

set +e
srun "${SRUN_ARGS[@]}" bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' task \
  python3 -m benchlib.driver \
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
    --transformer-impl transformer_engine \
    --moe-permute-fusion \
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
    --exit-duration-in-mins 15 \
  2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
set -e

if [ "$status" -eq 0 ]; then
  rm -f "$RUN_DIR/INCOMPLETE"
fi
# Parse the log into result.json beside it (does not change the job's exit status).
python3 -m benchlib collect "$RUN_DIR" || true
exit "$status"
