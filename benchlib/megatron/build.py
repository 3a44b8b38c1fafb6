"""Build a Megatron-Core GPTModel in this process from Megatron command-line flags.

Used by the parity tests (CPU, `--transformer-impl local`) and by the GPU MLA parity script.
It goes through Megatron's own `parse_args` / `validate_args` / `core_transformer_config_from_args`,
so the model is the one a run with the same flags builds.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any


def init_single_process(tp: int = 1, pp: int = 1, ep: int = 1) -> None:
    """torch.distributed (gloo, world size 1) and Megatron's parallel state with the given sizes."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not dist.is_initialized():
        import socket

        with socket.socket() as sock:  # a free port; never the environment's MASTER_PORT (children inherit it)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, expert_model_parallel_size=ep
        )
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if torch.cuda.is_available():
        model_parallel_cuda_manual_seed(1234)


def parse_megatron_args(flags: list[str], gpu_capability: tuple[int, int] = (9, 0)) -> Any:
    """Megatron's own parse_args + validate_args on `flags` (CUDA capability answered on CPU)."""
    import torch
    from megatron.training.arguments import parse_args, validate_args

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    old_argv = sys.argv
    sys.argv = ["benchlib-convert"] + list(flags)
    import megatron.training.arguments as margs

    real_cap = torch.cuda.get_device_capability
    real_arch = getattr(margs, "get_device_arch_version", None)
    try:
        if not torch.cuda.is_available():
            # validate_args asks the GPU's capability (and, for TP>1, its architecture)
            torch.cuda.get_device_capability = lambda *a, **k: gpu_capability  # type: ignore[assignment]
            if real_arch is not None:
                margs.get_device_arch_version = lambda: gpu_capability[0]
        args = parse_args()
        import io
        import contextlib

        with contextlib.redirect_stdout(io.StringIO()):  # validate_args prints the whole argument dump
            validate_args(args)
    finally:
        sys.argv = old_argv
        torch.cuda.get_device_capability = real_cap  # type: ignore[assignment]
        if real_arch is not None:
            margs.get_device_arch_version = real_arch
    return args


def build_gpt_model(flags: list[str], *, spec: Any = None, pre_process: bool = True, post_process: bool = True) -> Any:
    """A GPTModel for `flags` on this process's parallel state (call init_single_process first).

    `spec`: a layer spec (or a callable(config) -> spec); default is Megatron's local spec
    (`--transformer-impl local`).
    """
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec
    from megatron.training.argument_utils import core_transformer_config_from_args

    args = parse_megatron_args(flags)
    config = core_transformer_config_from_args(args)
    use_te = args.transformer_impl == "transformer_engine"
    if spec is None:
        layer_spec = get_gpt_decoder_block_spec(config, use_transformer_engine=use_te, normalization=args.normalization)
    elif callable(spec):
        layer_spec = spec(config)
    else:
        layer_spec = spec
    mtp_spec = None
    if getattr(args, "mtp_num_layers", None):
        mtp_spec = get_gpt_mtp_block_spec(config, layer_spec, use_transformer_engine=use_te)
    padded = args.padded_vocab_size if getattr(args, "padded_vocab_size", None) else args.vocab_size
    import contextlib
    import torch

    # MLA builds its RoPE table on torch.cuda.current_device() whatever --use-cpu-initialization
    # says; on a CPU-only machine answer "cpu" for the duration of the build.
    ctx = contextlib.nullcontext() if torch.cuda.is_available() else cpu_current_device()
    with ctx:
        model = _new_gpt(GPTModel, config, layer_spec, mtp_spec, padded, args, pre_process, post_process)
    return model


@contextlib.contextmanager
def cpu_current_device():  # type: ignore[no-untyped-def]
    """CPU-only runs of Megatron modules: current_device() answers "cpu" and the CUDA RNG tracker's
    fork() (used around attention dropout, which is 0 here) is a no-op."""
    import torch
    from megatron.core import tensor_parallel

    real = torch.cuda.current_device
    tracker = tensor_parallel.get_cuda_rng_tracker()
    real_fork = tracker.fork
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    tracker.fork = lambda *a, **k: contextlib.nullcontext()  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.cuda.current_device = real  # type: ignore[assignment]
        tracker.fork = real_fork  # type: ignore[method-assign]


def _new_gpt(GPTModel: Any, config: Any, layer_spec: Any, mtp_spec: Any, padded: int, args: Any, pre_process: bool, post_process: bool) -> Any:
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        mtp_block_spec=mtp_spec,
        vocab_size=padded,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        rope_scaling=args.use_rope_scaling,
    )
