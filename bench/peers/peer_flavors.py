"""torchtitan flavors beside the peer harness's 4-layer one, for scenarios with another NUM_LAYERS.

Imported by torchtitan itself (`--experimental.custom_import peer_flavors`, with this folder on
PYTHONPATH; bench/peers/torchtitan.py does both). It imports the harness's own module first
(`peer_qwen3moe`: the `qwen3_peer` train spec, its synthetic data and the 4-layer flavor), then
registers `peer_30b_a3b_<N>l`: the same Qwen3-30B-A3B shapes with N layers.
"""
import dataclasses

import peer_qwen3moe  # noqa: F401  (registers the train spec and peer_30b_a3b_4l)
from torchtitan.models.qwen3 import qwen3_args

LAYER_COUNTS = (1, 2, 8, 12, 16)  # bench/peers/torchtitan.py lists the same

for _layers in LAYER_COUNTS:
    qwen3_args[f"peer_30b_a3b_{_layers}l"] = dataclasses.replace(qwen3_args["peer_30b_a3b_4l"], n_layers=_layers)
