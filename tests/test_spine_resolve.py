"""Resolution: precedence, typed knobs, layout refusals, backend refusals (no torch needed)."""
from __future__ import annotations

import pytest

from benchlib.core.errors import BenchError
from benchlib.config.model_config import available_models
from benchlib.config.resolve import resolve_run
from benchlib.config.runtime_conf import ROW_KEYS, runtime_sections

MODELS = available_models()
PROXY = "Qwen3-30B-A3B-Proxy" if "Qwen3-30B-A3B-Proxy" in MODELS else MODELS[0]


def resolve(env: dict[str, str], *argv: str, **kw):
    return resolve_run(list(argv), env, **kw)


def test_every_model_has_a_runtime_row_and_every_row_a_model():
    sections = runtime_sections()
    base_rows = {name for name in sections if ":" not in name}
    assert MODELS, "no model configs shipped"
    assert base_rows == set(MODELS)
    for name, values in sections.items():
        assert name.split(":")[0] in MODELS, f"[{name}] names no model"
        if ":" not in name:
            assert not set(ROW_KEYS) - set(values), f"[{name}] lacks {set(ROW_KEYS) - set(values)}"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_resolves_at_its_default_layout(model, clean_env):
    run = resolve({**clean_env, "MODEL": model}, "CLUSTER=template", mode="sbatch")
    assert run.world_size == run.knobs.NNODES * run.cluster.GPUS_PER_NODE
    args = run.megatron_args
    # Placeholders are filled with the knobs' values.
    assert args[args.index("--num-layers") + 1] == str(run.knobs.NUM_LAYERS)
    assert args[args.index("--expert-model-parallel-size") + 1] == str(run.knobs.EP)
    assert args[args.index("--global-batch-size") + 1] == str(run.knobs.GBS)
    assert "${" not in " ".join(args)
    assert run.flags["--seq-length"] == str(run.knobs.SEQ_LEN)


def test_precedence_common_row_env_args(clean_env):
    model = "Qwen3-30B-A3B-Proxy" if "Qwen3-30B-A3B-Proxy" in MODELS else MODELS[0]
    run = resolve({**clean_env, "MODEL": model}, "CLUSTER=template")
    assert run.provenance["TP"].startswith("runtime.conf")
    assert run.provenance["TRAIN_ITERS"] == "common.conf"
    run = resolve({**clean_env, "MODEL": model, "TRAIN_ITERS": "7"}, "CLUSTER=template")
    assert run.knobs.TRAIN_ITERS == 7 and run.provenance["TRAIN_ITERS"] == "environment"
    run = resolve({**clean_env, "MODEL": model, "TRAIN_ITERS": "7"}, "CLUSTER=template", "TRAIN_ITERS=9")
    assert run.knobs.TRAIN_ITERS == 9 and run.provenance["TRAIN_ITERS"] == "arguments"
    assert run.megatron_args[run.megatron_args.index("--train-iters") + 1] == "9"


def test_extra_megatron_args_come_last_and_win(clean_env):
    run = resolve({**clean_env, "MODEL": MODELS[0]}, "CLUSTER=template", "--lr", "0.123", "--train-iters", "3")
    assert run.megatron_args[-4:] == ["--lr", "0.123", "--train-iters", "3"]
    assert run.flags["--lr"] == "0.123" and run.flags["--train-iters"] == "3"


def test_gpu_type_row_overrides_model_row(clean_env):
    sections = runtime_sections()
    gpu_rows = [s for s in sections if ":" in s]
    assert gpu_rows, "runtime.conf should ship per-GPU rows (e.g. GB200)"
    name = gpu_rows[0]
    model, gpu = name.split(":")
    run = resolve({**clean_env, "MODEL": model, "GPU_TYPE": gpu, "GPUS_PER_NODE": "4" if gpu.startswith("GB") else "8"}, "CLUSTER=template")
    for key, value in sections[name].items():
        assert str(getattr(run.knobs, key)).lower() in (value.lower(), {"1": "true", "0": "false"}.get(value, value).lower())
        assert run.provenance[key] == f"runtime.conf [{name}]"


def test_unknown_model_lists_models(clean_env):
    with pytest.raises(BenchError) as err:
        resolve({**clean_env, "MODEL": "NoSuchModel"})
    for model in MODELS:
        assert model in str(err.value)


def test_missing_model_says_how(clean_env):
    with pytest.raises(BenchError, match="MODEL is not set"):
        resolve(clean_env)


def test_unknown_knob_argument_lists_valid_knobs(clean_env):
    with pytest.raises(BenchError) as err:
        resolve({**clean_env, "MODEL": MODELS[0]}, "TPP=2")
    text = str(err.value)
    assert "TPP" in text and "did you mean TP" in text and "MBS" in text


def test_secret_as_argument_is_refused(clean_env):
    with pytest.raises(BenchError, match="WANDB_API_KEY must not be passed"):
        resolve({**clean_env, "MODEL": MODELS[0]}, "WANDB_API_KEY=abc")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"TP": "3"}, r"not divisible by TP\*PP\*CP"),
        ({"GBS": "7", "NNODES": "1", "PP": "1", "TP": "1", "CP": "1", "EP": "1", "PP_FIRST": "0", "PP_LAST": "0", "VPP": "1"}, "GBS=7 is not divisible by MBS\\*DP"),
        ({"MBS": "abc"}, "not an integer"),
        ({"PR": "fp16"}, "not one of: bf16, fp8, mxfp8"),
        ({"RUN_TIME": "20min"}, "not HH:MM:SS"),
    ],
)
def test_bad_layouts_are_refused(settings, message, clean_env):
    with pytest.raises(BenchError, match=message):
        resolve({**clean_env, "MODEL": MODELS[0], **settings}, "CLUSTER=template")


@pytest.mark.skipif("DeepSeek-V3" not in MODELS, reason="DeepSeek-V3 config not shipped")
def test_deepseek_v3_ep6_refused_with_divisors(clean_env):
    with pytest.raises(BenchError) as err:
        resolve({**clean_env, "MODEL": "DeepSeek-V3", "EP": "6"}, "CLUSTER=template")
    assert "256 experts are not divisible by EP=6" in str(err.value)
    assert "8, 16, 32" in str(err.value)


def _single_node(model: str, **extra: str) -> dict[str, str]:
    return {"MODEL": model, "NNODES": "1", "TP": "1", "PP": "1", "CP": "1", "EP": "1", "ETP": "1", "VPP": "1", "PP_FIRST": "0", "PP_LAST": "0", "MBS": "1", "GBS": "8", **extra}


def test_pipeline_layer_split_checks(clean_env):
    base = {**clean_env, **_single_node(PROXY, NUM_LAYERS="10", GBS="8")}
    with pytest.raises(BenchError, match="does not split evenly over PP=4"):
        resolve({**base, "PP": "4"}, "CLUSTER=template")
    with pytest.raises(BenchError, match="leaves 7 layers"):
        resolve({**base, "PP": "4", "PP_FIRST": "1", "PP_LAST": "2"}, "CLUSTER=template")
    run = resolve({**base, "PP": "4", "PP_FIRST": "2", "PP_LAST": "2"}, "CLUSTER=template")
    assert run.flags["--decoder-first-pipeline-num-layers"] == "2"
    assert run.flags["--decoder-last-pipeline-num-layers"] == "2"
    with pytest.raises(BenchError, match="VPP=2 needs PP>1"):
        resolve({**base, "VPP": "2"}, "CLUSTER=template")
    with pytest.raises(BenchError, match="must divide by VPP"):
        resolve({**base, "PP": "2", "VPP": "2", "NUM_LAYERS": "6"}, "CLUSTER=template")
    run = resolve({**base, "PP": "2", "VPP": "2", "NUM_LAYERS": "8"}, "CLUSTER=template")
    assert run.flags["--num-virtual-stages-per-pipeline-rank"] == "2"
    # A layout flag given by the user replaces the derived ones.
    run = resolve({**base, "PP": "4", "PP_FIRST": "2", "PP_LAST": "2"}, "CLUSTER=template", "--pipeline-model-parallel-layout", "Et*3|t*3|t*2|t*2L")
    assert "--decoder-first-pipeline-num-layers" not in run.flags


def test_seq_len_beyond_max_positions_raises_them(clean_env):
    run = resolve({**clean_env, "MODEL": MODELS[0], "SEQ_LEN": "1048576"}, "CLUSTER=template")
    assert run.flags["--max-position-embeddings"] == "1048576"


def test_precision_and_dispatcher_flags(clean_env):
    moe = next(m for m in MODELS if "DeepSeek-V3" == m) if "DeepSeek-V3" in MODELS else MODELS[0]
    run = resolve({**clean_env, "MODEL": moe, "PR": "fp8", "DISPATCHER": "deepep"}, "CLUSTER=template")
    assert run.flags["--fp8-format"] == "e4m3" and run.flags["--bf16"] is True
    assert run.flags["--moe-token-dispatcher-type"] == "flex"
    assert run.flags["--moe-flex-dispatcher-backend"] == "deepep"
    with pytest.raises(BenchError, match="mxfp8 needs a Blackwell GPU"):
        resolve({**clean_env, "MODEL": moe, "PR": "mxfp8"}, "CLUSTER=template")


def test_recompute_offload_profile_wandb_flags(clean_env):
    env = {**clean_env, "MODEL": MODELS[0], "RECOMPUTE": "selective", "RECOMPUTE_MODULES": "moe_act layernorm", "OPTIMIZER_OFFLOAD": "1", "PROFILE": "torch", "WANDB": "1", "COMMENT": "try 1"}
    run = resolve(env, "CLUSTER=template")
    a = run.megatron_args
    i = a.index("--recompute-modules")
    assert a[i + 1 : i + 3] == ["moe_act", "layernorm"]
    assert "--optimizer-cpu-offload" in a and "--use-precision-aware-optimizer" in a
    assert "--use-pytorch-profiler" in a and a[a.index("--profile-step-start") + 1] == "10"
    assert not [f for f in a if f.startswith("--wandb")]  # the job's follower logs to WandB, not Megatron
    assert run.knobs.WANDB_RUN_NAME.endswith("try_1")


def test_native_backend_refuses_te_features_naming_the_missing_piece(clean_env):
    base = {**clean_env, **_single_node(MODELS[0]), "BACKEND": "native"}
    with pytest.raises(BenchError, match="PR=fp8 needs Transformer Engine"):
        resolve({**base, "PR": "fp8"}, "CLUSTER=template")
    with pytest.raises(BenchError, match="DeepEP"):
        resolve({**base, "DISPATCHER": "deepep"}, "CLUSTER=template")
    with pytest.raises(BenchError, match="--moe-permute-fusion: the fused permutation kernel is in Transformer Engine"):
        resolve(base, "CLUSTER=template", "--moe-permute-fusion")
    run = resolve(base, "CLUSTER=template")
    assert run.backend.name == "native" and run.flags["--transformer-impl"] == "local"


def test_local_backend_refuses_mla(clean_env):
    mla = [m for m in MODELS if "DeepSeek" in m or "Kimi" in m]
    if not mla:
        pytest.skip("no MLA model shipped")
    with pytest.raises(BenchError, match="multi-latent attention does not build with Megatron's local spec"):
        resolve({**clean_env, **_single_node(mla[0]), "BACKEND": "local", "NUM_LAYERS": "4"}, "CLUSTER=template", "--moe-layer-freq", "1")


def test_auto_backend_is_te_in_pyxis_containers(clean_env):
    run = resolve({**clean_env, "MODEL": MODELS[0]}, "CLUSTER=template")
    assert run.backend.name == "te" and run.flags["--transformer-impl"] == "transformer_engine"


def test_real_data_needs_paths(clean_env):
    env = {**clean_env, "MODEL": PROXY, "DATA": "real"}
    with pytest.raises(BenchError, match="DATA=real needs DATA_PATH and TOKENIZER_MODEL"):
        resolve(env, "CLUSTER=local")
    run = resolve({**env, "DATA_PATH": "/d/text_document", "TOKENIZER_MODEL": "/tok"}, "CLUSTER=local")
    assert run.flags["--data-path"] == "/d/text_document" and run.flags["--tokenizer-type"] == "HuggingFaceTokenizer"
    assert "--mock-data" not in run.flags


def test_random_data_is_mock_data_for_megatron_and_the_knob_for_the_driver(clean_env):
    """DATA=random renders Megatron's --mock-data and NullTokenizer, as mock does; the rank tells them
    apart by DATA in its environment, rendered for every choice (a shell's DATA must not stand in)."""
    env = {**clean_env, "MODEL": PROXY}
    mock = resolve(env, "CLUSTER=local")
    random = resolve(env, "CLUSTER=local", "DATA=random")
    assert random.flags["--mock-data"] is True and random.flags["--tokenizer-type"] == "NullTokenizer"
    assert "--data-path" not in random.flags
    assert random.megatron_args == mock.megatron_args  # Megatron sees the same argv
    assert random.env["DATA"] == "random" and random.provenance["DATA"] == "arguments"
    assert mock.env["DATA"] == "mock"
    # the argument wins over a DATA in the environment, on the rank too
    assert resolve({**env, "DATA": "random"}, "CLUSTER=local", "DATA=mock").env["DATA"] == "mock"
    real = resolve({**env, "DATA_PATH": "/d/text_document", "TOKENIZER_MODEL": "/tok"}, "CLUSTER=local", "DATA=real")
    assert real.env["DATA"] == "real"
    with pytest.raises(BenchError, match="DATA='synthetic'.*not one of: mock, random, real"):
        resolve(env, "CLUSTER=local", "DATA=synthetic")


def test_random_data_needs_benchlibs_driver(clean_env):
    """Megatron's pretrain_gpt.py knows only its MockGPTDataset: it would train on mock data unannounced."""
    env = {**clean_env, "MODEL": PROXY, "DATA": "random"}
    with pytest.raises(BenchError, match="DATA=random is benchlib's driver's dataset; ENTRY=pretrain_gpt") as err:
        resolve(env, "CLUSTER=local", "ENTRY=pretrain_gpt", "MEGATRON_PATH=/opt/megatron-lm")
    assert "ENTRY=driver" in err.value.hint
    with pytest.raises(BenchError, match=r"ENTRY=auto runs Megatron's pretrain_gpt.py \(MEGATRON_PATH=/opt/megatron-lm\)"):
        resolve(env, "CLUSTER=local", "MEGATRON_PATH=/opt/megatron-lm")
    run = resolve(env, "CLUSTER=local", "ENTRY=driver", "MEGATRON_PATH=/opt/megatron-lm")
    assert run.env["DATA"] == "random"
    assert resolve({**env, "DATA": "mock"}, "CLUSTER=local", "MEGATRON_PATH=/opt/megatron-lm").env["DATA"] == "mock"


def test_pretrain_0_needs_load_path(clean_env):
    with pytest.raises(BenchError, match="PRETRAIN=0 needs LOAD_PATH"):
        resolve({**clean_env, "MODEL": PROXY, "PRETRAIN": "0"}, "CLUSTER=local")
    run = resolve({**clean_env, "MODEL": PROXY, "PRETRAIN": "0", "LOAD_PATH": "/ckpt"}, "CLUSTER=local")
    assert run.flags["--load"] == "/ckpt"


def test_local_cluster_without_gpus_renders_for_one(clean_env):
    run = resolve({**clean_env, "MODEL": PROXY, "NNODES": "1", "EP": "1", "GBS": "8", "TP": "1", "PP": "1", "PP_FIRST": "0", "PP_LAST": "0", "VPP": "1", "CP": "1"}, "CLUSTER=local", mode="interactive", local_gpus=0)
    assert run.gpus_per_node == 1 and any("no NVIDIA GPU" in n for n in run.notes)
    assert run.mode == "interactive" and run.to_json()["mode"] == "interactive"


def test_moe_layer_pattern_must_match_num_layers(clean_env):
    from benchlib.config.model_config import load_model

    with_pattern = [m for m in MODELS if "[" in str(load_model(m).model_args.get("--moe-layer-freq", ""))]
    if not with_pattern:
        pytest.skip("no model with a layer pattern")
    model = with_pattern[0]
    with pytest.raises(BenchError, match=r"--moe-layer-freq lists \d+ layers but NUM_LAYERS=3"):
        resolve({**clean_env, **_single_node(model, NUM_LAYERS="3")}, "CLUSTER=template")
    # A pattern given as an extra argument replaces the model's and is what gets checked.
    run = resolve({**clean_env, **_single_node(model, NUM_LAYERS="3")}, "CLUSTER=template", "--moe-layer-freq", "([0]*1+[1]*2)")
    assert run.flags["--moe-layer-freq"] == "([0]*1+[1]*2)"


def test_layer_pattern_parser():
    from benchlib.metrics.flops import eval_layer_pattern

    assert eval_layer_pattern("([0]*3+[1]*58)") == [0] * 3 + [1] * 58
    assert eval_layer_pattern("[1,0,1]") == [1, 0, 1]
    with pytest.raises(BenchError):
        eval_layer_pattern("__import__('os').system('id')")


def _fake_nvidia_smi(tmp_path, monkeypatch, gpus: int, name: str = "NVIDIA H200") -> None:
    """A stand-in nvidia-smi (no GPU here) answering the two queries the suite makes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    listing = "\\n".join(f"GPU {i}: {name} (UUID: GPU-{i})" for i in range(gpus))
    (bin_dir / "nvidia-smi").write_text(f'#!/bin/sh\nif [ "$1" = "-L" ]; then printf "{listing}\\n"; else printf "{name}\\n"; fi\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")


def test_local_gpus_respect_cuda_visible_devices(tmp_path, monkeypatch, clean_env):
    from benchlib.config.resolve import detect_local_gpus

    _fake_nvidia_smi(tmp_path, monkeypatch, 4)
    assert detect_local_gpus({}) == 4
    assert detect_local_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == 1
    assert detect_local_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}) == 2
    run = resolve({**clean_env, "MODEL": PROXY, "CUDA_VISIBLE_DEVICES": "0,1"}, "CLUSTER=local", mode="interactive")
    assert run.gpus_per_node == 2 and run.world_size == 2
    assert run.cluster.GPU_TYPE == "H200"  # detected from the GPU's name


def test_native_backend_refuses_cp_and_etp(clean_env):
    base = {**clean_env, **_single_node(PROXY), "BACKEND": "native", "NNODES": "1"}
    with pytest.raises(BenchError, match="CP=2: context parallelism needs Transformer Engine"):
        resolve({**base, "CP": "2"}, "CLUSTER=template")
    with pytest.raises(BenchError, match="ETP=2: expert tensor parallelism"):
        resolve({**base, "ETP": "2"}, "CLUSTER=template")


def test_a2a_overlap_flags_per_backend(clean_env):
    base = {**clean_env, **_single_node(PROXY), "NNODES": "1", "EP": "4", "A2A_OVERLAP": "1"}
    native = resolve({**base, "BACKEND": "native"}, "CLUSTER=template")
    assert "--overlap-moe-expert-parallel-comm" in native.megatron_args
    # delayed expert wgrad needs TE's grouped linear: only the TE backend asks for it
    assert "--delay-wgrad-compute" not in native.megatron_args
    # the all-to-all stream must not share one hardware queue with compute
    assert native.env["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"
    te = resolve({**base, "BACKEND": "te"}, "CLUSTER=template")
    assert "--overlap-moe-expert-parallel-comm" in te.megatron_args and "--delay-wgrad-compute" in te.megatron_args
    with pytest.raises(BenchError, match="A2A_OVERLAP=1 .*local spec"):
        resolve({**base, "BACKEND": "local"}, "CLUSTER=template")
    with pytest.raises(BenchError, match="A2A_OVERLAP=1 needs EP>1"):
        resolve({**base, "EP": "1", "BACKEND": "native"}, "CLUSTER=template")
    plain = resolve({**base, "A2A_OVERLAP": "0", "BACKEND": "native"}, "CLUSTER=template")
    assert "--overlap-moe-expert-parallel-comm" not in plain.megatron_args
    assert plain.env.get("CUDA_DEVICE_MAX_CONNECTIONS") == "1"


def test_fast_ops_knob_reaches_the_native_ranks_and_the_memory_check(clean_env):
    from benchlib.planning.memory import estimate_memory

    base = {**clean_env, **_single_node(PROXY), "NNODES": "1", "BACKEND": "native", "MBS": "4", "GBS": "32"}
    on = resolve(base, "CLUSTER=template")
    assert on.knobs.FAST_OPS and on.env["FAST_OPS"] == "1"  # one name from the user to the rank
    off = resolve({**base, "FAST_OPS": "0"}, "CLUSTER=template")
    assert off.env["FAST_OPS"] == "0" and off.provenance["FAST_OPS"] == "environment"
    # without the fused loss the cross-entropy keeps fp32 logits instead of bf16 ones (+2 bytes a
    # logit) and has a bf16 copy beside them while it runs (up to +2 more): 16384 tokens x 151936
    logits = 16384 * 151936
    extra = estimate_memory(off).peak_allocated - estimate_memory(on).peak_allocated
    assert 2 * logits < extra <= 4 * logits
    te = resolve({**base, "BACKEND": "te", "FAST_OPS": "0"}, "CLUSTER=template")
    assert "FAST_OPS" not in te.env  # no effect outside the native spec


def test_routing_manual_gc_and_repeats_knobs(clean_env):
    env = {**clean_env, "MODEL": "Qwen3-30B-A3B-Proxy"}
    default = resolve(env, "CLUSTER=template")
    assert "--moe-router-force-load-balancing" not in default.flags
    assert default.flags["--manual-gc"] is True and default.flags["--manual-gc-interval"] == "100"
    forced = resolve({**env, "ROUTING": "forced", "MANUAL_GC": "0"}, "CLUSTER=template")
    assert forced.flags["--moe-router-force-load-balancing"] is True and "--manual-gc" not in forced.flags
    with pytest.raises(BenchError, match="ROUTING='balanced'.*not one of: learned, forced"):
        resolve({**env, "ROUTING": "balanced"}, "CLUSTER=template")
    with pytest.raises(BenchError, match="REPEATS=0.*below 1"):
        resolve({**env, "REPEATS": "0"}, "CLUSTER=template")


def test_fast_optimizer_knob_reaches_the_ranks_of_the_backends_without_te(clean_env):
    base = {**clean_env, **_single_node(PROXY), "NNODES": "1", "MBS": "4", "GBS": "32"}
    on = resolve({**base, "BACKEND": "native"}, "CLUSTER=template")
    assert on.knobs.FAST_OPTIMIZER and on.env["FAST_OPTIMIZER"] == "1"  # one name from the user to the rank
    off = resolve({**base, "BACKEND": "native", "FAST_OPTIMIZER": "0"}, "CLUSTER=template")
    assert off.env["FAST_OPTIMIZER"] == "0" and off.provenance["FAST_OPTIMIZER"] == "environment"
    local = resolve({**base, "BACKEND": "local", "FAST_OPTIMIZER": "0"}, "CLUSTER=template")
    assert local.env["FAST_OPTIMIZER"] == "0"
    te = resolve({**base, "BACKEND": "te"}, "CLUSTER=template")
    assert "FAST_OPTIMIZER" not in te.env  # TE's fused Adam is used there


def test_compile_knob_is_off_by_default_and_reaches_the_native_ranks(clean_env):
    base = {**clean_env, **_single_node(PROXY), "NNODES": "1", "MBS": "4", "GBS": "32", "BACKEND": "native"}
    assert resolve(base, "CLUSTER=template").env["COMPILE"] == "0"
    on = resolve({**base, "COMPILE": "1"}, "CLUSTER=template")
    assert on.knobs.COMPILE and on.env["COMPILE"] == "1"  # one name from the user to the rank
    assert "COMPILE" not in resolve({**base, "BACKEND": "local", "COMPILE": "1"}, "CLUSTER=template").env
