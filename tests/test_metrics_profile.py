"""benchlib.metrics.profile on a real torch.profiler trace (tests/fixtures/profile/README.md): two
steps of the Qwen3-30B-A3B proxy at GBS 4 on one H200, as Megatron-Core 0.19.2 wrote it with
PROFILE=torch, trimmed to the GPU events and syncs. What ended each idle gap is checked on a whole
trace of the same proxy (tests/fixtures/planning/, with its CPU ops and launch calls; bench/trace_gaps.py's
fixture). The figures are checked against plain readings of the same trace, not numbers written here."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from benchlib.metrics.collect import collect_run_dir, result_for
from benchlib.metrics.profile import (
    MAX_CHAIN, SUMMARY_GAPS, SYNC_CALLS, gap_line, kernel_category, profile_for, short_gpu_name, summary_lines,
    trace_profile)
from benchlib.metrics.summary_text import format_summary

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUN = FIXTURES / "profile" / "qwen3-proxy-gbs4"
TRACE = RUN / "torch_profile" / "rank-0.json.gz"
LOG = FIXTURES / "logs" / "h200x1_qwen3-30b-a3b-proxy_fastops_mbs4.log"
# the whole trace (CPU ops, launch calls, correlations) of the proxy with FAST_OPTIMIZER, steps 6-7
WHOLE_TRACE = FIXTURES / "planning" / "h200x1_qwen3-30b-a3b-proxy_gbs4_fast_optimizer_trace.json.gz"


def _events(path: Path = TRACE) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)["traceEvents"]


def _steps(events: list[dict]) -> list[dict]:
    return sorted((e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")),
                  key=lambda e: e["ts"])


@pytest.fixture(scope="module")
def profile() -> dict:
    return trace_profile(TRACE)


def test_every_profiled_step_is_read_with_busy_plus_idle_equal_to_wall(profile: dict) -> None:
    steps = _steps(_events())
    assert [s["step"] for s in profile["steps"]] == [int(e["name"].split("#")[1]) for e in steps] == [6, 7]
    for got, raw in zip(profile["steps"], steps):
        assert got["wall_ms"] == pytest.approx(raw["dur"] / 1000, abs=1e-3)
        assert got["gpu_busy_ms"] + got["gpu_idle_ms"] == pytest.approx(got["wall_ms"], abs=2e-3)
        assert 0 < got["gpu_busy_ms"] < got["wall_ms"]
        # idle is the gaps between the busy intervals: the largest ones fit in it and in the step
        gaps = got["largest_idle_gaps"]
        assert gaps == sorted(gaps, key=lambda g: -g["ms"]) and sum(g["ms"] for g in gaps) <= got["gpu_idle_ms"] + 1e-3
        assert all(0 <= g["at_ms"] and g["at_ms"] + g["ms"] <= got["wall_ms"] + 1e-3 for g in gaps)
    mean = profile["mean_per_step"]
    assert mean["wall_ms"] == pytest.approx(sum(s["wall_ms"] for s in profile["steps"]) / 2, abs=1e-3)
    assert mean["gpu_busy_share"] == pytest.approx(mean["gpu_busy_ms"] / mean["wall_ms"], abs=1e-4)


def test_busy_time_is_the_union_of_the_gpu_events_in_the_step(profile: dict) -> None:
    events = _events()
    gpu = [e for e in events if e["cat"] in ("kernel", "gpu_memcpy", "gpu_memset")]
    for got, raw in zip(profile["steps"], _steps(events)):
        t0, t1 = raw["ts"], raw["ts"] + raw["dur"]
        # a plain reading: sweep the clipped events' edges, counting time where at least one runs
        edges = sorted(edge for e in gpu if min(e["ts"] + e["dur"], t1) > max(e["ts"], t0)
                       for edge in ((max(e["ts"], t0), 1), (min(e["ts"] + e["dur"], t1), -1)))
        running, last, covered = 0, t0, 0.0
        for at, change in edges:
            covered += (at - last) if running else 0.0
            running, last = running + change, at
        assert got["gpu_busy_ms"] == pytest.approx(covered / 1000, abs=2e-3)
        # categories add the events' clipped durations: at least the union, at most with the streams' overlap
        clipped = sum(max(0.0, min(e["ts"] + e["dur"], t1) - max(e["ts"], t0)) for e in gpu) / 1000
        by_cat = got["gpu_ms_by_category"]
        assert sum(by_cat.values()) == pytest.approx(clipped, abs=0.02)
        assert got["gpu_busy_ms"] - 0.01 <= sum(by_cat.values()) <= got["gpu_busy_ms"] * 1.05
        assert set(by_cat) >= {"gemm", "attention", "triton", "elementwise", "memcpy", "memset"}


def test_overlapping_streams_count_once_in_busy_time_and_a_step_clips_what_spills_over(tmp_path: Path) -> None:
    def event(cat: str, name: str, ts: float, dur: float, **extra) -> dict:
        return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": extra.pop("tid", 7), "ts": ts, "dur": dur, **extra}

    trace = tmp_path / "rank-0.json.gz"
    trace.write_bytes(gzip.compress(json.dumps({"traceEvents": [
        event("user_annotation", "ProfilerStep#3", 1000, 1000, tid=1),
        event("kernel", "nvjet_sm90_gemm", 1100, 400, args={"correlation": 11}),  # 1100-1500
        event("kernel", "_rope_kernel", 1300, 400, tid=20),  # 1300-1700, another stream: overlaps 200
        event("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 1900, 300),  # spills 200 past the step's end
        event("cuda_runtime", "cudaEventSynchronize", 1700, 10, tid=1),  # returned in the gap too: shorter
        event("cuda_runtime", "cudaStreamSynchronize", 1750, 150, tid=1),
        event("cuda_runtime", "cudaStreamSynchronize", 1600, 50, tid=1),  # returned while the GPU was busy
        event("cuda_runtime", "cudaLaunchKernel", 1090, 5, tid=1, args={"correlation": 11}),
    ]}).encode()))
    (step,) = trace_profile(trace)["steps"]
    assert step["step"] == 3 and step["wall_ms"] == 1.0
    assert step["gpu_busy_ms"] == 0.7 and step["gpu_idle_ms"] == 0.3  # 1100-1700 and 1900-2000
    assert step["gpu_ms_by_category"] == {"gemm": 0.4, "triton": 0.4, "memcpy": 0.1}
    # the first gap: ended by a memcpy without a correlation, after the host's 150 us sync (the longest
    # that returned in the gap; the 50 us one returned before it); the second: by a kernel whose
    # cudaLaunchKernel no CPU op encloses
    assert step["largest_idle_gaps"] == [
        {"ms": 0.2, "at_ms": 0.7, "ended_by": {"gpu": "Memcpy DtoH (Device -> Pinned)", "launch": None, "cpu_ops": None},
         "host_wait_ms": 0.15, "host_wait_call": "cudaStreamSynchronize"},
        {"ms": 0.1, "at_ms": 0.0, "ended_by": {"gpu": "nvjet_sm90_gemm", "launch": "cudaLaunchKernel", "cpu_ops": []},
         "host_wait_ms": None, "host_wait_call": None}]
    assert step["host_syncs"] == {"count": 3, "by_call": {"cudaEventSynchronize": 1, "cudaStreamSynchronize": 2},
                                  "cpu_wait_ms": 0.21}


def test_a_gap_names_the_cpu_ops_around_the_launch_on_its_thread_and_the_trailing_gap_none(tmp_path: Path) -> None:
    def event(cat: str, name: str, ts: float, dur: float, tid: int = 1, **extra) -> dict:
        return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": tid, "ts": ts, "dur": dur, **extra}

    nested = [event("cpu_op", f"op{depth}", 1000 + depth, 300 - 2 * depth) for depth in range(MAX_CHAIN + 2)]
    trace = tmp_path / "rank-0.json.gz"
    trace.write_bytes(gzip.compress(json.dumps({"traceEvents": [
        event("user_annotation", "ProfilerStep#5", 1000, 1000),
        event("user_annotation", "Optimizer.step#AdamW.step", 1000, 300),  # encloses them all: outermost
        *nested,
        event("cpu_op", "aten::other_thread", 1000, 300, tid=2),  # same time, another thread: not in the chain
        event("cpu_op", "aten::before", 1000, 100),  # ended before the launch
        event("cuda_driver", "cuLaunchKernelEx", 1200, 10, args={"correlation": 5}),
        event("kernel", "_adamw_kernel", 1400, 200, tid=7, args={"correlation": 5}),
    ]}).encode()))
    (step,) = trace_profile(trace)["steps"]
    trailing, leading = step["largest_idle_gaps"]  # 1600-2000, then 1000-1400
    assert (trailing["at_ms"], trailing["ms"], trailing["ended_by"]) == (0.6, 0.4, None)
    assert leading["ended_by"]["launch"] == "cuLaunchKernelEx" and leading["ended_by"]["gpu"] == "_adamw_kernel"
    chain = ["Optimizer.step#AdamW.step", *(e["name"] for e in nested)]
    keep = (MAX_CHAIN - 1) // 2
    assert leading["ended_by"]["cpu_ops"] == chain[:keep] + ["..."] + chain[-keep:]
    assert len(leading["ended_by"]["cpu_ops"]) <= MAX_CHAIN


@pytest.mark.parametrize(("name", "short"), [
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >(int, "
     "at::native::FillFunctor<float>, std::array<char*, 1ul>)", "vectorized_elementwise_kernel<4, FillFunctor<float>, ...>"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<float, float, float, "
     "at::native::binary_internal::MulFunctor<float> >, std::array<char*, 3ul> >(int, at::native::BinaryFunctor<float, "
     "float, float, at::native::binary_internal::MulFunctor<float> >, std::array<char*, 3ul>)",
     "vectorized_elementwise_kernel<4, BinaryFunctor<...>, ...>"),
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "ncclDevKernel_AllGather_RING_LL"),
    ("_adamw_kernel", "_adamw_kernel"),
    ("Memcpy DtoH (Device -> Pinned)", "Memcpy DtoH (Device -> Pinned)"),
    ("_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_kernel_for_sm9xINS_4gemm6kernel13GemmUniversalIN",
     "_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_ke..."),
])
def test_short_gpu_names(name: str, short: str) -> None:
    assert short_gpu_name(name) == short


@pytest.fixture(scope="module")
def whole() -> tuple[list[dict], dict]:
    return _events(WHOLE_TRACE), trace_profile(WHOLE_TRACE)


def _launch_chain(events: list[dict], launch: dict) -> list[str]:
    """A plain reading: the cpu_op / user_annotation events on the launch's thread whose span holds
    the launch call, outermost first, ProfilerStep left out."""
    around = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation") and e.get("ph") == "X"
              and e["tid"] == launch["tid"] and e["ts"] <= launch["ts"]
              and e["ts"] + e["dur"] >= launch["ts"] + launch["dur"] and not e["name"].startswith("ProfilerStep#")]
    return [e["name"] for e in sorted(around, key=lambda e: (e["ts"], -e["dur"]))]


def test_every_gap_in_a_whole_trace_names_the_launch_and_cpu_ops_that_ended_it(whole) -> None:
    events, profile = whole
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    for got, raw in zip(profile["steps"], _steps(events)):
        assert len(got["largest_idle_gaps"]) == 8
        for gap in got["largest_idle_gaps"]:
            end = raw["ts"] + (gap["at_ms"] + gap["ms"]) * 1000
            if end >= raw["ts"] + raw["dur"] - 1:
                assert gap["ended_by"] is None  # the step ended before the GPU's next work
                continue
            # the GPU event starting where the gap ends, read plainly (the gap's ms are rounded to 1 us)
            ender = min((e for e in gpu if raw["ts"] <= e["ts"] < raw["ts"] + raw["dur"]), key=lambda e: abs(e["ts"] - end))
            assert abs(ender["ts"] - end) < 1.5
            launch = launches[ender["args"]["correlation"]]
            assert gap["ended_by"]["gpu"] == short_gpu_name(ender["name"])
            assert gap["ended_by"]["launch"] == launch["name"]
            chain = _launch_chain(events, launch)
            assert chain and len(gap["ended_by"]["cpu_ops"]) <= MAX_CHAIN
            assert gap["ended_by"]["cpu_ops"][0] == chain[0] and gap["ended_by"]["cpu_ops"][-1] == chain[-1]


def test_the_gap_before_the_optimizers_adamw_kernel_is_its_triton_launch_in_optimizer_step(whole) -> None:
    _events_, profile = whole
    for got in profile["steps"]:
        (adamw,) = [g for g in got["largest_idle_gaps"] if g["ended_by"] and g["ended_by"]["gpu"] == "_adamw_kernel"]
        # Triton launches through the driver API, not the runtime
        assert adamw["ended_by"]["launch"] == "cuLaunchKernelEx"
        assert adamw["ended_by"]["cpu_ops"][0].startswith("Optimizer.step#")
        assert adamw["ms"] == max(g["ms"] for g in got["largest_idle_gaps"])  # the largest gap of the step


def test_a_gap_after_a_long_sync_reports_the_hosts_wait(whole) -> None:
    events, profile = whole
    syncs = [e for e in events if e.get("cat") == "cuda_runtime" and e["name"] in SYNC_CALLS]
    for got, raw in zip(profile["steps"], _steps(events)):
        for gap in got["largest_idle_gaps"]:
            start = raw["ts"] + gap["at_ms"] * 1000
            inside = [e for e in syncs if start - 1 <= e["ts"] + e["dur"] <= start + gap["ms"] * 1000 + 1]
            if not inside:
                assert gap["host_wait_ms"] is None and gap["host_wait_call"] is None
                continue
            longest = max(inside, key=lambda e: e["dur"])
            assert gap["host_wait_ms"] == pytest.approx(longest["dur"] / 1000, abs=1e-3)
            assert gap["host_wait_call"] == longest["name"]
        # the step's longest sync (the host waiting for the backward to drain) returns into one of
        # the largest gaps: the GPU sat idle while the host queued what came after it
        in_step = [e for e in syncs if raw["ts"] <= e["ts"] < raw["ts"] + raw["dur"]]
        longest = max(in_step, key=lambda e: e["dur"])
        assert longest["dur"] > 10_000
        assert any(g["host_wait_ms"] == pytest.approx(longest["dur"] / 1000, abs=1e-3)
                   for g in got["largest_idle_gaps"])


def test_a_trace_without_launch_events_leaves_the_launch_and_its_cpu_ops_null(profile: dict) -> None:
    events = _events()
    assert not any(e["cat"] in ("cpu_op", "cuda_driver") for e in events)  # the trimmed fixture
    for got in profile["steps"]:
        for gap in got["largest_idle_gaps"]:
            if gap["ended_by"] is not None:
                assert gap["ended_by"]["gpu"] and gap["ended_by"]["launch"] is None and gap["ended_by"]["cpu_ops"] is None
        # the syncs are in the trimmed trace: the host's waits are still there
        assert any(g["host_wait_ms"] for g in got["largest_idle_gaps"])


def test_the_summary_prints_the_largest_gaps_with_what_ended_them(whole) -> None:
    _events_, profile = whole
    rows = dict(summary_lines({"ranks": {"0": profile}}))
    gaps = profile["mean_per_step"]["largest_idle_gaps"]
    assert [rows[f"idle gap {i}"] for i in range(1, SUMMARY_GAPS + 1)] == [gap_line(g) for g in gaps[:SUMMARY_GAPS]]
    assert "idle gap 1" in rows and f"idle gap {SUMMARY_GAPS + 1}" not in rows
    first = gaps[0]
    assert rows["idle gap 1"] == (
        f"{first['ms']:.2f} ms at +{first['at_ms']:.1f} ms of step {first['step']} -> _adamw_kernel "
        f"[{' > '.join(first['ended_by']['cpu_ops'])}]; host waited {first['host_wait_ms']:.3f} ms in cudaStreamSynchronize")
    # a result.json written before gaps had `ended_by` still prints
    assert gap_line({"ms": 1.5, "at_ms": 2.25, "step": 7}) == "1.50 ms at +2.2 ms of step 7"


def test_top_kernels_name_the_fast_optimizers_adamw_kernel(profile: dict) -> None:
    top = profile["mean_per_step"]["top_kernels"]
    assert top == sorted(top, key=lambda k: -k["ms"])
    adamw = next(k for k in top if k["name"] == "_adamw_kernel")
    assert adamw["category"] == "triton"
    raw = [e for e in _events() if e["cat"] == "kernel" and e["name"] == "_adamw_kernel"]
    assert adamw["calls"] == len(raw) / 2 and adamw["ms"] == pytest.approx(sum(e["dur"] for e in raw) / 2000, abs=1e-3)


def test_host_syncs_are_counted_per_step_with_the_cpus_wait(profile: dict) -> None:
    events = _events()
    syncs = [e for e in events if e["cat"] == "cuda_runtime" and e["name"] in SYNC_CALLS]
    for got, raw in zip(profile["steps"], _steps(events)):
        inside = [e for e in syncs if raw["ts"] <= e["ts"] < raw["ts"] + raw["dur"]]
        assert got["host_syncs"]["count"] == len(inside) == sum(got["host_syncs"]["by_call"].values())
        assert got["host_syncs"]["cpu_wait_ms"] == pytest.approx(sum(e["dur"] for e in inside) / 1000, abs=1e-3)
        # the backward's `.item()`s run on autograd's own thread, not the step's: they count too
        assert sum(1 for e in inside if e["tid"] != raw["tid"]) >= 10
    assert profile["mean_per_step"]["host_syncs"] == sum(s["host_syncs"]["count"] for s in profile["steps"]) / 2


@pytest.mark.parametrize(("name", "category"), [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "gemm"),
    ("_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_kernel_for_sm9xINS_4gemm6kernel13GemmUniversalINS5_17GroupProblemShapeIN4cute5tupleIJiiiEEEEENS", "grouped_gemm"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128_1x4x1_cga1x1x1_kernel0_0", "attention"),
    ("_adamw_kernel", "triton"),
    ("triton_red_fused__to_copy_mul_silu_split_sum_1", "triton"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >(int)", "copy_cat"),
    ("void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add<float> >(int)", "elementwise"),
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "nccl"),
])
def test_kernel_categories(name: str, category: str) -> None:
    assert kernel_category(name) == category


def _run_dir(tmp_path: Path, *, trace: bytes | None, profile_knob: str = "torch") -> Path:
    # the log is another real Qwen3-proxy run's (the traced run's log is not kept): collect reads the
    # log and the trace each on its own, and these tests are about the trace's way into result.json
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    shutil.copy(LOG, run_dir / "logs" / "train.log")
    (run_dir / "resolved.json").write_text(json.dumps({
        "knobs": {"PROFILE": profile_knob, "PROFILE_STEPS": "6:8"}, "world_size": 1,
        "cluster_config": {"GPU_TYPE": "H200"}}))
    if trace is not None:
        (run_dir / "torch_profile").mkdir()
        (run_dir / "torch_profile" / "rank-0.json.gz").write_bytes(trace)
    return run_dir


def test_collect_puts_the_profile_into_result_json_and_prints_it(tmp_path: Path, capsys) -> None:
    run_dir = _run_dir(tmp_path, trace=TRACE.read_bytes())
    collect_run_dir(run_dir)
    data = json.loads((run_dir / "result.json").read_text())
    assert data["profile"]["ranks"]["0"]["trace"] == "torch_profile/rank-0.json.gz"
    assert data["profile"]["ranks"]["0"]["steps"] == trace_profile(TRACE)["steps"]
    assert not [w for w in data["warnings"] if "trace" in w]
    out = capsys.readouterr().out
    mean = data["profile"]["ranks"]["0"]["mean_per_step"]
    assert f"busy {mean['gpu_busy_ms']:.1f} ms, idle {mean['gpu_idle_ms']:.1f} ms" in out
    assert "GPU time by kind" in out and "gemm" in out and "host syncs per step" in out
    gap_rows = [line for line in out.splitlines() if line.startswith("idle gap ")]
    assert gap_rows[0].split(None, 3)[3] == gap_line(mean["largest_idle_gaps"][0])


def test_a_profile_run_without_its_trace_warns_where_it_looked(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, trace=None)
    result, _ = result_for(str(run_dir))
    assert result.profile is None
    assert any("PROFILE=torch but no trace" in w and str(run_dir / "torch_profile") in w for w in result.warnings)
    quiet = _run_dir(tmp_path / "other", trace=None, profile_knob="0")
    assert not [w for w in result_for(str(quiet))[0].warnings if "trace" in w]
    assert "GPU per step" not in format_summary(result)


@pytest.mark.parametrize("damage", ["truncated", "not_gzip", "not_a_trace", "malformed"])
def test_an_unreadable_trace_is_a_warning_not_a_crash(tmp_path: Path, damage: str) -> None:
    whole = TRACE.read_bytes()
    step = {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#6", "ts": 0, "dur": "x"}
    trace = {"truncated": whole[: len(whole) // 2], "not_gzip": b"{\"traceEvents\": []}",
             "not_a_trace": gzip.compress(b"{\"traceEvents\": [{\"cat\": \"kernel\"}]}"),
             "malformed": gzip.compress(json.dumps({"traceEvents": [step]}).encode())}[damage]
    run_dir = _run_dir(tmp_path, trace=trace)
    profile, warnings = profile_for(run_dir, profile_knob="torch")
    assert profile is None
    assert len(warnings) == 1 and "unreadable profiler trace" in warnings[0] and "rank-0.json.gz" in warnings[0]
    collect_run_dir(run_dir)  # and collect writes its result all the same
    data = json.loads((run_dir / "result.json").read_text())
    assert data["profile"] is None and warnings[0] in data["warnings"]


def test_every_rank_trace_is_read_and_a_bad_one_does_not_hide_the_others(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, trace=TRACE.read_bytes())
    (run_dir / "torch_profile" / "rank-1.json.gz").write_bytes(b"\x1f\x8b broken")
    profile, warnings = profile_for(run_dir, profile_knob="torch")
    assert list(profile["ranks"]) == ["0"] and len(warnings) == 1 and "rank-1.json.gz" in warnings[0]
