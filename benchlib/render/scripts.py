"""Render a ResolvedRun into the sbatch script or the interactive script, through Jinja.

Every value that enters a script goes through `shell_quote` (the `q` filter); templates use
StrictUndefined so a missing value fails rendering instead of producing an empty string.
`#SBATCH` lines are built from data (`sbatch_directives`), not written by hand in a template.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Iterable

import jinja2

from benchlib.core.errors import BenchError
from benchlib.core.rundir import CALIBRATION_DIR, CALIBRATION_LOG, INCOMPLETE_MARKER, LOGS_DIR, REPEAT_LOG, RESULT_FILE, TRAIN_LOG, WANDB_LOG, WANDB_STOP_FILE
from benchlib.core.paths import SUITE_ROOT, TEMPLATE_DIR
from benchlib.config.resolve import ResolvedRun
from benchlib.core.secrets import assert_no_secrets



def shell_quote(value: Any) -> str:
    """The one quoting helper: every rendered value passes through here."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL byte cannot be passed through a shell script")
    return shlex.quote(text)


def shell_join(words: Iterable[Any]) -> str:
    return " ".join(shell_quote(w) for w in words)


def shell_lines(words: list[Any], indent: str = "    ") -> str:
    """Quoted words, one `--flag [values]` group per line (readable diffs of rendered scripts)."""
    from benchlib.config.flags import _is_flag

    groups: list[list[str]] = [[]]
    for word in words:
        if str(word).startswith("--") and _is_flag(str(word)) and groups[-1]:
            groups.append([])
        groups[-1].append(shell_quote(word))
    return (" \\\n" + indent).join(" ".join(g) for g in groups if g)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = shell_quote
    env.filters["qjoin"] = shell_join
    env.filters["qlines"] = shell_lines
    return env


def train_entry(run: ResolvedRun) -> str:
    """The ENTRY knob with auto decided."""
    if run.knobs.ENTRY == "auto":
        return "pretrain_gpt" if run.cluster.MEGATRON_PATH else "driver"
    return run.knobs.ENTRY
# An interrupted interactive run: SIGTERM to its processes, SIGKILL to those left after this.
STOP_GRACE_S = 10


def train_command(run: ResolvedRun) -> list[str]:
    """What each rank executes (after the launcher: srun task or torchrun)."""
    k, c = run.knobs, run.cluster
    entry = train_entry(run)
    if entry == "driver":
        return [c.PYTHON, "-m", "benchlib.megatron.driver", *run.megatron_args]
    if entry == "pretrain_gpt":
        return [c.PYTHON, f"{c.MEGATRON_PATH}/pretrain_gpt.py", *run.megatron_args]
    if entry == "validate":
        return [c.PYTHON, "-m", "benchlib", "validate-args", "--gpu-type", c.GPU_TYPE, "--", *run.megatron_args]
    return shlex.split(k.ENTRY_COMMAND)


def torchrun_entry(run: ResolvedRun) -> list[str]:
    """The same command for torchrun: it takes a script or `-m module`, not an interpreter."""
    cmd = train_command(run)
    if cmd and cmd[0] == run.cluster.PYTHON:
        return cmd[1:]
    return ["--no-python", *cmd]


def sbatch_directives(run: ResolvedRun, run_dir: Path) -> list[tuple[str, str]]:
    k, c = run.knobs, run.cluster
    out: list[tuple[str, str]] = [
        ("job-name", run.job_name),
        ("nodes", str(k.NNODES)),
        ("ntasks-per-node", str(run.gpus_per_node)),
        ("time", k.RUN_TIME),
        ("output", f"{run_dir}/logs/slurm-%j.out"),
    ]
    if c.REQUEST_GPUS:
        out.append(("gpus-per-node", str(run.gpus_per_node)))
    for key, value in (("account", c.ACCOUNT), ("partition", c.PARTITION), ("qos", c.QOS)):
        if value:
            out.append((key, value))
    if c.SEGMENT:
        out.append(("segment", str(c.SEGMENT)))
    if k.SINGLETON:
        out.append(("dependency", "singleton"))
    if k.COMMENT:
        out.append(("comment", k.COMMENT))
    for key, value in out:
        if "\n" in value or "\r" in value:
            raise BenchError(f"the #SBATCH --{key} value has a line break: {value!r}", hint="use a value on one line (COMMENT, OUTPUT_ROOT, names)")
    return out


def _render(template: str, run: ResolvedRun, run_dir: Path, **extra: Any) -> str:
    text = _env().get_template(template).render(
        run=run,
        run_dir=str(run_dir),
        suite_root=str(SUITE_ROOT),
        log_path=f"{run_dir}/{LOGS_DIR}/{TRAIN_LOG}",
        incomplete_marker=INCOMPLETE_MARKER,
        result_file=RESULT_FILE,
        wandb_stop_file=WANDB_STOP_FILE,
        wandb_log=WANDB_LOG,
        calibration_dir=CALIBRATION_DIR,
        calibration_log=f"{LOGS_DIR}/{CALIBRATION_LOG}",
        calibrate=run.knobs.CALIBRATE and train_entry(run) in ("driver", "pretrain_gpt"),
        repeat_log=f"{LOGS_DIR}/" + REPEAT_LOG.replace("{n}", "$REPEAT"),
        **extra,
    )
    assert_no_secrets(text, f"the rendered {template}")
    return text


def render_sbatch(run: ResolvedRun, run_dir: Path | None = None) -> str:
    run_dir = run_dir or run.run_dir
    return _render(
        "sbatch.sh.j2", run, run_dir,
        directives=sbatch_directives(run, run_dir),
        sbatch_extra=shlex.split(run.cluster.SBATCH_EXTRA),
        train_cmd=train_command(run),
    )


def render_interactive(run: ResolvedRun, run_dir: Path | None = None) -> str:
    return _render("interactive.sh.j2", run, run_dir or run.run_dir, torchrun_args=torchrun_entry(run),
                   stop_grace_s=STOP_GRACE_S)
