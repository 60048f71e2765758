"""The before/after grid of the Results tab: one prompt and seed at LoRA strengths 0, 0.5 and 1.

Made by a child process (``python -m training.compare``) so the UI stays torch-free, and one GPU job at a time:
never while a training run is active or queued, and the Train tab starts no run while a grid is being made.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.results import lora_report
from app.supervisor import JobSupervisor, child_env, new_group_kwargs
from training.contract.errors import UserError
from training.contract.layout import JOB_FILE

COMPARE_DIR = "compare"  # <run>/compare/: grids and their log
COMPARE_LOG = "compare.log"
COMPARE_TIMEOUT_S = 1800  # a CPU-only machine renders SD1.5 slowly; a GPU takes seconds
_compare_lock = threading.Lock()  # one grid at a time, whatever the number of browser tabs


@dataclass
class CompareRequest:
    run_dir: Path
    lora: Path
    prompt: str
    seed: int
    steps: int
    strengths: str


def check_compare(req: CompareRequest, supervisor: JobSupervisor) -> None:
    """What is known before a process starts: the inputs, the file, and that the GPU is free."""
    from training.contract.services import COMPARE_MAX_STEPS as MAX_STEPS
    from training.contract.services import parse_strengths

    if not (req.prompt or "").strip():
        raise UserError("the prompt is empty: give the prompt to render")
    if req.seed is None or not 0 <= int(req.seed) < 2**63:
        raise UserError("seed: use a whole number from 0")
    if req.steps is None or not 1 <= int(req.steps) <= MAX_STEPS:
        raise UserError(f"steps: use 1 to {MAX_STEPS}")
    parse_strengths(req.strengths)
    if not (req.run_dir / JOB_FILE).is_file():
        raise UserError(f"{req.run_dir}: the run has no {JOB_FILE}, so its base model is unknown")
    report = lora_report(req.lora)
    if not report.keys:
        raise UserError(f"{req.lora.name} holds no weights" + (" (a dry-run placeholder)" if
                                                              report.metadata.get("loraforge_dry_run") else ""))
    busy = [s for s in supervisor.discover() if s.running or s.status == "queued"]
    if busy:
        raise UserError(f"a training run is active ({busy[0].output_name}/{busy[0].run_id}, {busy[0].status}); "
                        "the GPU does one job at a time, so compare once it has finished")


def compare_active() -> bool:
    """A grid is being made in this UI process (the Train tab can refuse to start a run meanwhile)."""
    return _compare_lock.locked()


def compare_command(req: CompareRequest, out: Path, python: str = sys.executable) -> list[str]:
    """The child's command line; free text goes in ``--flag=value`` form, so a prompt such as "-sketch" or the
    strengths "-1,0,1" are never taken for options."""
    return [python, "-m", "training.compare", "--config", str(req.run_dir / JOB_FILE), "--lora", str(req.lora),
            f"--prompt={req.prompt.strip()}", "--seed", str(int(req.seed)), "--steps", str(int(req.steps)),
            f"--strengths={req.strengths}", f"--out={out}"]


def run_compare(req: CompareRequest, supervisor: JobSupervisor, python: str = sys.executable,
                timeout: float = COMPARE_TIMEOUT_S) -> Path:
    """Make the grid in a child process; returns the PNG under <run>/compare/. The child's output goes to
    <run>/compare/compare.log; a failure becomes a UserError with its one-line reason."""
    check_compare(req, supervisor)
    if not _compare_lock.acquire(blocking=False):
        raise UserError("another comparison is being made; wait for it to finish")
    try:
        folder = req.run_dir / COMPARE_DIR
        folder.mkdir(exist_ok=True)
        out = folder / f"{req.lora.stem}_seed{int(req.seed)}_{time.strftime('%Y%m%d-%H%M%S')}.png"
        code = _run_logged(compare_command(req, out, python), folder / COMPARE_LOG, timeout)
    finally:
        _compare_lock.release()
    if code == 0 and out.is_file():
        return out
    raise UserError(compare_failure(folder / COMPARE_LOG, code))


def _run_logged(cmd: list[str], log_path: Path, timeout: float) -> int | None:
    """Run cmd with its output appended to log_path; None when it ran out of time (and was ended)."""
    import shlex

    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n".encode())
        log.flush()
        try:
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env=child_env(), timeout=timeout, check=False, **new_group_kwargs()).returncode
        except subprocess.TimeoutExpired:
            log.write(f"error: no grid after {timeout:g} s; the process was ended\n".encode())
            return None


def compare_failure(log_path: Path, code: int | None) -> str:
    """The child's own 'error: ...' line when it wrote one, else where to look."""
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
    except OSError:
        tail = []
    reason = next((ln.removeprefix("error: ") for ln in reversed(tail) if ln.startswith("error: ")), None)
    if reason:
        return reason
    return f"the comparison process ended with exit status {code}; see {log_path}"


def default_prompt(run_dir: Path) -> str:
    """The run's first sample prompt (without its --options), a sensible thing to compare on."""
    from training.contract.config_io import load_config
    from training.contract.prompts import load_prompts

    try:
        cfg, _ = load_config(run_dir / JOB_FILE)
        prompts = load_prompts(cfg.sample_prompts, cfg.resolution_wh)
    except (UserError, OSError):
        return ""
    return prompts[0].prompt if prompts else ""
