"""benchlib's GPT pretraining driver for pip Megatron-Core: `python -m benchlib.driver <megatron args>`."""
