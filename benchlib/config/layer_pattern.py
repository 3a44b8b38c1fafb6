"""Megatron's layer-pattern strings (`--moe-layer-freq` and the like), read without eval."""
from __future__ import annotations

import ast
from typing import Any

from benchlib.core.errors import BenchError


def eval_layer_pattern(expr: str) -> list[int]:
    """Megatron's layer-pattern strings such as "([0]*3+[1]*58)" or "([1]*3+[0]*2)*2", without eval."""
    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node))
    try:
        value = ev(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ValueError, TypeError):
        raise BenchError(f"cannot read layer pattern {expr!r}",
                         hint="write it as Megatron does, e.g. \"([0]*3+[1]*58)\" or an integer frequency") from None
    if not isinstance(value, list):
        raise BenchError(f"layer pattern {expr!r} is not a list", hint="e.g. \"([0]*1+[1]*3)\"")
    return [int(v) for v in value]


def layer_pattern(freq: Any, num_layers: int, *, name: str = "moe_layer_freq") -> list[int]:
    """1 where a layer is MoE. An integer N means every N-th layer counting from layer 0."""
    if isinstance(freq, str):
        if "[" in freq:
            freq = eval_layer_pattern(freq)
        else:
            try:
                freq = int(freq)
            except ValueError:
                raise BenchError(f"cannot read {name}={freq!r}", hint="an integer frequency or a pattern like \"([0]*3+[1]*58)\"") from None
    if isinstance(freq, int) and not isinstance(freq, bool):
        if freq < 1:
            raise BenchError(f"{name}={freq} must be >= 1", hint="use 1 for every layer MoE")
        return [1 if i % freq == 0 else 0 for i in range(num_layers)]
    pattern = [int(v) for v in freq]
    if len(pattern) != num_layers:
        raise BenchError(f"{name} has {len(pattern)} entries but the model has {num_layers} layers",
                         hint="make the pattern list as long as the layer count")
    return pattern
