"""What the Train tab shows of a run, as plain values: progress bar, samples by step, the run picker's choices.

No Gradio: each function turns run files or a RunSnapshot into HTML, (path, caption) pairs or (label, value) choices,
so it can be tested on real run folders without a page.
"""

from __future__ import annotations

import threading
from pathlib import Path

from app.runs import run_folder
from app.settings import Settings
from app.supervisor import JobSupervisor, RunSnapshot
from training.contract.events import Event, Sample, Start, read_events
from training.contract.layout import JOB_FILE

FOLLOW = "follow"  # run picker value: show the active run, else the newest
FOLLOW_LABEL = "Active or newest run"
PROMPT_CHARS = 60  # gallery captions: the start of the prompt is enough to tell them apart


CONTROL_NAMES = ("start", "queue", "stop", "resume", "sample", "save")  # the Train tab's buttons, in output order


def control_states(shown: RunSnapshot, busy: bool, form_ok: bool) -> dict[str, bool]:
    """Which Train-tab buttons may be pressed. ``shown``: the run the page shows; ``busy``: a run is going or
    queued to start (then Start would only queue a duplicate; Queue another run is the deliberate way);
    ``form_ok``: the form has no invalid field."""
    running = shown.status in ("starting", "running")
    return {"start": form_ok and not busy, "queue": form_ok and busy, "stop": running, "sample": running,
            "save": running, "resume": form_ok and shown.status == "stopped" and bool(shown.state.state_path)}


def progress_bar(snap: RunSnapshot) -> str:
    """An HTML bar for step/total (inline styles: nothing to add to the page's CSS). Empty before the start."""
    s = snap.state
    if not s.started or not s.total_steps:
        return ""
    share = max(0.0, min(1.0, s.step / s.total_steps))
    colour = {"failed": "#d9534f", "stopped": "#f0ad4e"}.get(snap.status, "#3b82f6")
    return (f'<div role="progressbar" aria-valuemin="0" aria-valuemax="{s.total_steps}" aria-valuenow="{s.step}" '
            f'title="step {s.step} of {s.total_steps}" '
            f'style="height:12px;border-radius:6px;background:#e5e7eb;overflow:hidden">'
            f'<div style="width:{share * 100:.1f}%;height:100%;background:{colour}"></div></div>')


def sample_prompts(events: list[Event]) -> list[str]:
    """The prompt texts of the run's last start event, in sample order ([] when unknown or unreadable)."""
    from training.contract.errors import UserError
    from training.contract.prompts import load_prompts

    start = next((e for e in reversed(events) if isinstance(e, Start)), Start())
    config = start.config
    try:
        return [p.prompt for p in load_prompts(config.get("sample_prompts"), (512, 512))]
    except (UserError, OSError, ValueError):
        return []


def sample_gallery(run_dir: Path) -> list[tuple[str, str]]:
    """Every sample image of a run with the caption "step N: prompt", newest step first, prompt order within a step.
    Read from the event log (each sample event says its step), so it does not depend on who polled which event."""
    events = read_events(run_dir)
    prompts = sample_prompts(events)
    batches = [e for e in events if isinstance(e, Sample) and e.paths]
    items = []
    for batch in sorted(batches, key=lambda e: e.step, reverse=True):  # stable: a step's batches in order
        epoch = f" (epoch {batch.epoch})" if batch.epoch else ""
        for i, path in enumerate(batch.paths):
            if not Path(path).is_file():
                continue
            prompt = prompts[i] if i < len(prompts) else ""
            if len(prompt) > PROMPT_CHARS:
                prompt = prompt[: PROMPT_CHARS - 1] + "…"
            items.append((path, f"step {batch.get('step')}{epoch}: {prompt}".rstrip(": ")))
    return items


class GalleryCache:
    """sample_gallery per (run, number of samples): the log is re-read only when a run has written new samples."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, list[tuple[str, str]]]] = {}
        self._lock = threading.Lock()

    def get(self, run_dir: Path, count: int) -> list[tuple[str, str]]:
        with self._lock:
            hit = self._cache.get(run_dir)
            if hit and hit[0] == count:
                return hit[1]
        items = sample_gallery(run_dir)
        with self._lock:
            self._cache[run_dir] = (count, items)
        return items


def run_choices(supervisor: JobSupervisor) -> list[tuple[str, str]]:
    """The run picker: "follow" first, then every run newest first as "name · id · status (step n/total)"."""
    choices = [(FOLLOW_LABEL, FOLLOW)]
    for s in supervisor.discover():
        steps = f" (step {s.step}/{s.total_steps})" if s.total_steps and s.status != "done" else ""
        choices.append((f"{s.output_name} · {s.run_id} · {s.status}{steps}", str(s.run_dir)))
    return choices


def picked_run(settings: Settings, value: str | None) -> Path | None:
    """The run folder a picker value names, or None for "follow". Raises UserError for anything that is not a run
    folder under the data dir."""
    return None if not value or value == FOLLOW else run_folder(settings.data_dir, value)


def has_sample_prompts(run_dir: Path) -> bool:
    """Whether the run's job.toml sets sample_prompts (the trainer makes no samples without them)."""
    import tomllib

    try:
        job = tomllib.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return True  # unknown: let the trainer decide
    return bool((job.get("sample") or {}).get("sample_prompts"))
