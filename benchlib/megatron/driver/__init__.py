"""benchlib's GPT pretraining driver for pip Megatron-Core: `python -m benchlib.megatron.driver <megatron args>`."""
