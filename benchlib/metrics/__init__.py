"""Metrics: Megatron log parsing, steady state, FLOPs/MFU, run status, result JSON, compare, WandB push.

Nothing here imports torch or megatron at module level: parsing runs on login nodes.
"""
from __future__ import annotations

from benchlib.metrics.logparse import ParsedLog, parse_log
from benchlib.metrics.result import RunResult, load_result, summarize, write_result
from benchlib.metrics.summary_text import format_summary

__all__ = ["ParsedLog", "RunResult", "format_summary", "load_result", "parse_log", "summarize", "write_result"]
