"""Megatron MoE Bench: resolve, validate, render, launch and measure MoE pretraining runs."""
__version__ = "0.1.0"
