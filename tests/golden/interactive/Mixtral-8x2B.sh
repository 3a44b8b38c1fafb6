#!/bin/bash
# Rendered by benchlib from the resolved run Mixtral-8x2B-TP1PP1EP8-bf16; edit the configs, not this file.
# No `set -x`: the environment may hold secrets (WANDB_API_KEY is inherited, never rendered).
set -euo pipefail

RUN_DIR=/runs/Mixtral-8x2B/20260101-000000-Mixtral-8x2B-TP1PP1EP8-bf16
LOG=/runs/Mixtral-8x2B/20260101-000000-Mixtral-8x2B-TP1PP1EP8-bf16/logs/train.log
SUITE_ROOT=@SUITE_ROOT@
mkdir -p "$RUN_DIR/logs"
echo "started $(date -u +%FT%TZ)" > "$RUN_DIR/INCOMPLETE"

export PYTHONPATH="$SUITE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export COMPILE=0
export CUDA_DEVICE_MAX_CONNECTIONS=1
export FAST_OPS=1
export FAST_OPTIMIZER=1
export NCCL_NVLS_ENABLE=0
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCH_NCCL_AVOID_RECORD_STREAMS=1

export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}" PET_NODE_RANK=0
LAUNCHER=()

# GPU calibration (CALIBRATE=0 turns it off): every rank measures its GPU into calibration/ (seconds).
# Best effort: a failure is noted and training goes on. Its own port: the training rendezvous follows.
"${LAUNCHER[@]}" python3 -m torch.distributed.run \
  --nnodes=1 --nproc-per-node=8 \
  --master-addr="$MASTER_ADDR" --master-port=29501 \
  -m benchlib.megatron.calibrate --out-dir "$RUN_DIR/calibration" \
  > "$RUN_DIR/logs/calibration.log" 2>&1 || echo "calibration failed (see $RUN_DIR/logs/calibration.log); training goes on"

status=0
for REPEAT in $(seq 1 1); do  # (body not indented: it is the one launch)
echo "[bench] launch $REPEAT of 1 (REPEATS)"
set +e
"${LAUNCHER[@]}" python3 -m torch.distributed.run \
  --nnodes=1 --nproc-per-node=8 \
  --master-addr="$MASTER_ADDR" --master-port=29500 \
  -m benchlib.megatron.driver \
    --tensor-model-parallel-size 1 \
    --pipeline-model-parallel-size 1 \
    --expert-model-parallel-size 8 \
    --expert-tensor-parallel-size 1 \
    --context-parallel-size 1 \
    --micro-batch-size 2 \
    --global-batch-size 256 \
    --seq-length 4096 \
    --num-layers 24 \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --overlap-param-gather \
    --hidden-size 2048 \
    --ffn-hidden-size 7168 \
    --num-attention-heads 16 \
    --group-query-attention \
    --num-query-groups 8 \
    --kv-channels 128 \
    --normalization RMSNorm \
    --norm-epsilon 1e-5 \
    --swiglu \
    --disable-bias-linear \
    --untie-embeddings-and-output-weights \
    --position-embedding-type rope \
    --rotary-base 1000000 \
    --rotary-percent 1.0 \
    --max-position-embeddings 32768 \
    --vocab-size 32000 \
    --make-vocab-size-divisible-by 128 \
    --num-experts 8 \
    --moe-router-topk 2 \
    --moe-ffn-hidden-size 7168 \
    --moe-router-score-function softmax \
    --moe-router-load-balancing-type aux_loss \
    --moe-aux-loss-coeff 0.02 \
    --moe-router-dtype fp32 \
    --lr 0.0003 \
    --min-lr 3e-05 \
    --lr-decay-style cosine \
    --lr-warmup-fraction 0.1 \
    --weight-decay 0.1 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --init-method-std 0.02 \
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
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || break  # a failed launch ends the repeats
done

if [ "$status" -eq 0 ]; then
  rm -f "$RUN_DIR/INCOMPLETE"
fi
python3 -m benchlib collect "$RUN_DIR" || true
exit "$status"
