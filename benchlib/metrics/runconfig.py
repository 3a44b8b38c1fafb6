"""What a run was: Megatron arguments from a resolved.json or a flag list, precision, layout."""
from __future__ import annotations

from typing import Any

from benchlib.config.flags import megatron_arg_dict, tokens_to_dict

LAYOUT_KEYS = {
    "tp": "tensor_model_parallel_size",
    "pp": "pipeline_model_parallel_size",
    "vpp": "virtual_pipeline_model_parallel_size",
    "cp": "context_parallel_size",
    "ep": "expert_model_parallel_size",
    "etp": "expert_tensor_parallel_size",
    "mbs": "micro_batch_size",
    "gbs": "global_batch_size",
    "seq": "seq_length",
}


def precision_of(cfg: dict[str, Any]) -> str:
    fp8 = cfg.get("fp8")
    if fp8 not in (None, False, "None"):
        return "fp8"
    if cfg.get("fp4") not in (None, False, "None"):
        return "fp4"
    if cfg.get("bf16") is True:
        return "bf16"
    if cfg.get("fp16") is True:
        return "fp16"
    return "fp32" if cfg else "bf16"


def layout_of(cfg: dict[str, Any], world_size: int | None) -> tuple[dict[str, int | None], str]:
    layout: dict[str, int | None] = {}
    for short, key in LAYOUT_KEYS.items():
        v = cfg.get(key)
        layout[short] = int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    tp, pp, cp = (layout[k] or 1 for k in ("tp", "pp", "cp"))
    layout["dp"] = world_size // (tp * pp * cp) if world_size else None
    name = "-".join(f"{k.upper()}{layout[k]}" for k in ("tp", "pp", "vpp", "cp", "ep", "etp", "dp", "mbs", "gbs")
                    if layout.get(k) is not None)
    return layout, name


def args_to_dict(argv: list[str]) -> dict[str, Any]:
    """A Megatron argument list (`--num-layers 4 --swiglu ...`) as argument names -> typed values."""
    return megatron_arg_dict(tokens_to_dict(argv))


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run metadata, Megatron argument dict) from a plain argument dict or a resolved.json."""
    meta: dict[str, Any] = {}
    if "megatron_args" in config and isinstance(config["megatron_args"], list):  # resolved.json
        args = args_to_dict([str(a) for a in config["megatron_args"]])
        cluster = config.get("cluster_config") or {}
        meta = {"model": config.get("model"), "gpu_type": cluster.get("GPU_TYPE"), "world_size": config.get("world_size"),
                "cluster": config.get("cluster"), "job_name": config.get("job_name"), "run_dir": config.get("run_dir")}
        return meta, args
    args = dict(config)
    for key in ("model", "model_name", "gpu_type", "cluster", "job_name", "run_dir"):
        if key in args and not isinstance(args[key], (dict, list)):
            meta[key.replace("model_name", "model")] = args.pop(key)
    return meta, args
