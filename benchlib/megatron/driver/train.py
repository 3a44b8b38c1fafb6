"""GPT pretraining on pip Megatron-Core (which ships `megatron.training` but no `pretrain_gpt.py`).

Wheel quirks handled here: `initialize` runs `compile_helpers()` (a `make` in a folder the
wheel ships without a Makefile) although the compiled `helpers_cpp` is in the wheel, so the
driver skips the step after checking the extension imports; `--spec benchlib.megatron.spec native_spec`
is a callable that Megatron's GPTModelBuilder calls per pipeline stage; an MTP block reuses the
native layer spec (Megatron would rebuild a local one, which cannot build MLA).

The driver decides nothing: the backend was chosen at resolution and the argv it receives is
the whole Megatron command (benchlib/config/backend.py).
"""
from __future__ import annotations

import os
import sys
from functools import partial
from typing import Any, Mapping, NoReturn

from benchlib.core.errors import BenchError
from benchlib.megatron.driver.argv import check_runnable, te_importable
from benchlib.megatron.driver.ending import run_rank


def main(argv: list[str] | None = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = check_runnable(argv, te_importable())
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"benchlib driver: backend {backend} (as resolved by the launcher)", flush=True)
    run_rank(partial(run, argv, backend))  # ends the process: a failed rank never lingers (ending.py)


def run(argv: list[str], backend: str) -> None:
    import megatron.core.datasets.utils as dataset_utils
    from megatron.core.enums import ModelType
    from megatron.training import pretrain
    from megatron.training.argument_utils import gpt_config_from_args, pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    dataset_utils.compile_helpers = _check_helpers_instead_of_make
    if backend == "native":
        _use_native_mtp_spec()
    _install_fast_optimizer()

    sys.argv = [sys.argv[0] or "benchlib.megatron.driver"] + argv
    args = parse_and_validate_args()
    fill_wheel_defaults(args)
    model_cfg = gpt_config_from_args(args)
    if args.spec is not None and model_cfg.transformer_layer_spec is None:
        raise BenchError(
            f"--spec {' '.join(args.spec)} could not be imported",
            hint="check the module and function names (benchlib's is: --spec benchlib.megatron.spec native_spec)",
        )
    cfg = pretrain_cfg_container_from_args(args, model_cfg)
    datasets_provider.is_distributed = True  # every rank builds its own (cheap) dataset view
    pretrain(cfg, datasets_provider, ModelType.encoder_or_decoder, forward_step)


def fill_wheel_defaults(args: Any) -> None:
    """0.19.2 leaves --eval-interval None, then divides by it when sizing the datasets."""
    if getattr(args, "eval_interval", None) is None:
        args.eval_interval = max(1, args.train_iters or 1)


def _check_helpers_instead_of_make() -> None:
    try:
        from megatron.core.datasets import helpers_cpp  # noqa: F401
    except ImportError as err:
        raise BenchError(
            f"Megatron-Core's compiled dataset helpers do not import ({err})",
            hint="reinstall megatron-core from its binary wheel (pip install --only-binary=:all: megatron-core)",
        ) from err


def _install_fast_optimizer() -> None:
    """Fused Adam and multi-tensor grad/param handling where Megatron fell back to torch's
    optimizer and its per-tensor loops (no TE/Apex); FAST_OPTIMIZER=0 keeps Megatron's own."""
    from benchlib.megatron import fast_optimizer

    patched = fast_optimizer.install()
    if patched and int(os.environ.get("RANK", "0")) == 0:
        print(f"benchlib driver: fast optimizer stand-ins for {', '.join(patched)}", flush=True)


def _use_native_mtp_spec() -> None:
    import megatron.training.models.gpt as gpt_models

    from benchlib.megatron.spec.layer_spec import native_mtp_block_spec

    gpt_models.mtp_block_spec = native_mtp_block_spec


def dataset_config(args: Any) -> Any:
    """GPTDatasetConfig from Megatron's parsed arguments (what pretrain_gpt.py builds)."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.training import get_tokenizer
    from megatron.training.utils import get_blend_and_blend_per_split

    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split,
        num_dataset_builder_threads=getattr(args, "num_dataset_builder_threads", 1),
        path_to_cache=getattr(args, "data_cache_path", None),
        mmap_bin_files=getattr(args, "mmap_bin_files", True),
        tokenizer=get_tokenizer(),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=getattr(args, "create_attention_mask_in_dataloader", True),
        mid_level_dataset_surplus=getattr(args, "mid_level_dataset_surplus", 0.005),
        object_storage_cache_path=getattr(args, "object_storage_cache_path", None),
    )


def data_choice(mock_data: bool, environ: Mapping[str, str] | None = None) -> str:
    """mock, random or real: --mock-data from the argv, random from the DATA knob the launch renders
    into every rank's environment (Megatron's parser has no flag for it; benchlib/config/flags.py)."""
    from benchlib.config.flags import DATA_ENV

    knob = (os.environ if environ is None else environ).get(DATA_ENV, "")
    if not mock_data:
        if knob == "random":
            raise BenchError(
                f"{DATA_ENV}=random but the arguments read real data (--data-path, no --mock-data)",
                hint="drop the --data-path extra argument, or run with DATA=real",
            )
        return "real"
    return "random" if knob == "random" else "mock"


def datasets_provider(train_val_test_num_samples: list[int], vp_stage: int | None = None) -> tuple:
    """Mock tokens (--mock-data), uniform random tokens (--mock-data with DATA=random: benchlib/megatron/
    random_tokens.py) or Megatron indexed data (--data-path), through Megatron's builder."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset
    from megatron.training import get_args, print_rank_0

    args = get_args()
    config = dataset_config(args)
    choice = data_choice(args.mock_data)
    if choice == "random":
        from benchlib.megatron.random_tokens import RandomTokensGPTDataset, low_level_dataset

        cls = RandomTokensGPTDataset
        docs = low_level_dataset(config.tokenizer, config.random_seed)
        ids = f"[0, {docs.vocab_size})" + (f" without EOD {docs.eod}" if docs.excludes_eod else "")
        print_rank_0(f"> building random-token GPT datasets (uniform ids in {ids}, seed {docs.seed}) ...")
    else:
        cls = MockGPTDataset if choice == "mock" else GPTDataset
        print_rank_0(f"> building {'mock' if choice == 'mock' else 'indexed'} GPT datasets ...")
    return BlendedMegatronDatasetBuilder(cls, train_val_test_num_samples, lambda: True, config).build()


def get_batch(data_iterator: Any, vp_stage: int | None = None) -> tuple:
    import torch
    from megatron.core import parallel_state as ps

    if data_iterator is None:
        return None, None, None, None, None
    batch = next(data_iterator)
    out = {}
    for key in ("tokens", "labels", "loss_mask", "attention_mask", "position_ids"):
        t = batch.get(key)
        out[key] = t.cuda(non_blocking=True) if isinstance(t, torch.Tensor) else t
    if ps.get_context_parallel_world_size() > 1:
        from megatron.core.utils import get_batch_on_this_cp_rank

        out = get_batch_on_this_cp_rank(out, is_hybrid_cp=False, cp_group=ps.get_context_parallel_group())
    return out["tokens"], out["labels"], out["loss_mask"], out["attention_mask"], out["position_ids"]


def loss_func(loss_mask: Any, output_tensor: Any) -> tuple:
    """Summed token loss, its token count, and [sum, count] for Megatron's per-token average."""
    import torch

    losses = output_tensor.view(-1).float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().clone().detach().to(torch.int)
    report = torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])
    return loss, num_tokens, {"lm loss": report}


def forward_step(data_iterator: Any, model: Any, return_schedule_plan: bool = False) -> tuple:
    """One micro-batch forward. With --overlap-moe-expert-parallel-comm, Megatron's combined
    1F1B schedule asks for the model's schedule plan instead of its output."""
    from megatron.training import get_timers

    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator)
    timers("batch-generator").stop()
    if return_schedule_plan:
        plan = model.build_schedule_plan(tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask)
        return plan, partial(loss_func, loss_mask)
    output = model(tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask)
    return output, partial(loss_func, loss_mask)
