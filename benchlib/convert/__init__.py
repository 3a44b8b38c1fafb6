"""Hugging Face <-> Megatron-Core checkpoint conversion (see docs/convert.md)."""
