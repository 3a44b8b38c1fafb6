"""Megatron distributed checkpoints (torch_dist) written and read one tensor at a time.

Writing goes through Megatron's own save path (save_preprocess, sharded keys, MCoreSavePlanner,
metadata.json) with the model's `sharded_state_dict()` taken from a meta-device model; only
`resolve_data` is ours: it produces each chunk when the writer asks for it, so at most one
parameter is in memory. The result loads with `--load` at any TP/PP/EP.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def _sharded_table(model: Any) -> tuple[dict, dict[str, list]]:
    """(sharded state dict with factories applied, {param name: [(key, global offset, meta view, prepend)]})."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    sd = model.sharded_state_dict()
    apply_factories(sd)
    params = model.state_dict(keep_vars=True)
    table: dict[str, list] = {}
    for name, entry in sd.items():
        # a chunk's place inside its parameter: the parameter may itself be a view (the native
        # spec's experts are slices of one stacked tensor), so offsets are taken relative to it
        base = params[name].storage_offset() if hasattr(params.get(name), "storage_offset") else 0
        for st in entry if isinstance(entry, list) else [entry]:
            if isinstance(st, ShardedTensor):
                rel = st.data.storage_offset() - base
                table.setdefault(name, []).append((st.key, tuple(st.global_offset), _View(tuple(st.data.shape), tuple(st.data.stride()), rel), st.prepend_axis_num))
    return sd, table


class _View:
    """Where a chunk sits inside its (contiguous, full) parameter: shape, strides, element offset."""

    def __init__(self, shape: tuple, stride: tuple, offset: int) -> None:
        self.shape, self._stride, self._offset = shape, stride, offset

    def stride(self) -> tuple:
        return self._stride

    def storage_offset(self) -> int:
        return self._offset


def _bounded_writer(path: str, file_bytes: int) -> Any:
    """A DCP FileSystemWriter whose data files hold at most ~file_bytes each, in plan order.

    torch's writer keeps every tensor of a file alive until that file is closed, so one file per
    rank would hold the whole model in memory; bounded files bound the memory.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import filesystem as fs_mod

    class BoundedWriter(dcp.FileSystemWriter):
        def write_data(self, plan, planner):  # noqa: ANN001, ANN201
            import queue

            prefix = plan.storage_data.prefix
            file_queue: queue.Queue = queue.Queue()
            bucket: list = []
            size = 0

            def put() -> None:
                name = f"{prefix}{file_queue.qsize()}{fs_mod.DEFAULT_SUFFIX}"
                file_queue.put((self.fs.concat_path(self.path, name), name, list(bucket)))

            for item in plan.items:
                n = fs_mod._item_size(item) if item.type != fs_mod.WriteItemType.BYTE_IO else 0
                if bucket and size + n > file_bytes:
                    put()
                    bucket.clear()
                    size = 0
                bucket.append(item)
                size += n
            if bucket:
                put()
            return self._write_data(planner, file_queue)

    return BoundedWriter(path, single_file_per_rank=True, thread_count=1)


def save(model: Any, out_dir: Path, produce: Callable[[str], Any], common: dict[str, Any], file_bytes: int = 2**30) -> None:
    """Write `model`'s sharded state dict to out_dir, taking each parameter's data from produce(name)."""
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint.planner import WriteItemType

    sd, table = _sharded_table(model)
    chunk_of: dict[tuple[str, tuple], tuple[str, Any, int]] = {}
    for name, chunks in table.items():
        for key, offset, view, prepend in chunks:
            chunk_of[(key, offset)] = (name, view, prepend)

    sharded, common_sd = save_preprocess(sd)
    common_sd.update(common)
    sharded["common_state"] = ShardedObject(key="common_state", data=common_sd, global_shape=(1,), global_offset=(0,), replica_id=0)
    sharded, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded, False)
    pyt_sd = mcore_to_pyt_state_dict(sharded, False)
    cache: dict[str, Any] = {}
    failures: list[BaseException] = []

    class LazyPlanner(MCoreSavePlanner):
        def resolve_data(self, write_item):  # noqa: ANN001, ANN201
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            name, view, prepend = chunk_of[(write_item.index.fqn, tuple(write_item.index.offset))]
            if name not in cache:
                cache.clear()  # one parameter at a time (its chunks come one after another)
                try:
                    cache[name] = produce(name)
                except Exception as err:  # DCP wraps errors; keep ours to re-raise as is
                    failures.append(err)
                    raise
            full = cache[name]
            part = full.as_strided(view.shape, view.stride(), view.storage_offset())
            return part.reshape((1,) * prepend + tuple(view.shape)).contiguous()

    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _bounded_writer(str(out_dir), file_bytes)
    try:
        dcp.save(pyt_sd, storage_writer=writer,
                 planner=LazyPlanner(dedup_replicated_tensors=False, flatten_state_dict=False, flatten_sharded_tensors=False))
    except BaseException:  # DCP's CheckpointException is a BaseException
        if failures:
            raise failures[0] from None
        raise
    cache.clear()
    save_config(CheckpointingConfig("torch_dist", 1), str(out_dir))


def _layer_of(key: str) -> str:
    """The transformer layer a sharded key belongs to ('decoder.layers.3.', 'mtp.layers.0.'), or the key itself."""
    import re

    m = re.match(r"(.*?layers\.\d+\.)", key)
    return m.group(1) if m else key


class Reader:
    """Reads full (TP=1) Megatron parameters from a torch_dist checkpoint, one parameter at a time."""

    def __init__(self, model: Any, ckpt_dir: Path, canonical_name: Callable[[str], str] = lambda name: name) -> None:
        """`canonical_name` maps Megatron's parameter names to the caller's (conversion's mapping)."""
        from torch.distributed.checkpoint import FileSystemReader

        self.dir = Path(ckpt_dir)
        self.reader = FileSystemReader(str(self.dir))
        self.meta = self.reader.read_metadata().state_dict_metadata

        _, table = _sharded_table(model)
        # keyed by the mapping's names (grouped experts' weight{i} -> local_experts.{i})
        self.table = {canonical_name(k): v for k, v in table.items()}
        self.shapes = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape")}
        self._cache: dict[str, Any] = {}

    def release(self) -> None:
        """Drop the tensors kept of the last layer read."""
        self._cache = {}

    def has(self, name: str) -> bool:
        return name in self.table and all(key in self.meta for key, *_ in self.table[name])

    def get(self, name: str, dtype: Any) -> Any:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        from benchlib.core.errors import BenchError

        chunks = self.table[name]
        keys = sorted({k for k, *_ in chunks})
        for k in keys:
            if k not in self.meta:
                raise BenchError(f"tensor {k} (for {name}) is missing from {self.dir}",
                                 hint="the checkpoint was saved for a different model; check --hf-config")
        # experts of one layer share one key per projection (linear_fc1, linear_fc2), asked for in turn:
        # keep the keys read for the current layer (one layer at most), drop those of other layers
        missing = [k for k in keys if k not in self._cache]
        if missing:
            layer = _layer_of(keys[0])
            self._cache = {k: v for k, v in self._cache.items() if _layer_of(k) == layer}
            fresh = {k: torch.empty(self.meta[k].size, dtype=self.meta[k].properties.dtype) for k in missing}
            dcp.load(fresh, storage_reader=self.reader, planner=DefaultLoadPlanner(allow_partial_load=True), no_dist=True)
            self._cache.update(fresh)
        want = self._cache
        full = torch.empty(self.shapes[name], dtype=want[keys[0]].dtype)
        for key, offset, view, prepend in chunks:
            src = want[key]
            idx = tuple(slice(o, o + s) for o, s in zip(offset, (1,) * prepend + tuple(view.shape)))
            full.as_strided(view.shape, view.stride(), view.storage_offset()).copy_(src[idx].reshape(view.shape))
        return full if dtype is None else full.to(dtype)  # None: as stored
