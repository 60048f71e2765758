"""What the tabs share: settings, the one JobSupervisor of this process, the form components and run history."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.form import FieldSpec
from app.runs import earlier_curve, read_preset
from app.settings import Settings
from app.supervisor import JobSupervisor, RunSnapshot
from training.contract.events import Error, Start, Step, Val
from training.contract.presets import PresetInfo


@dataclass
class RunRecord:
    """All step/val events of one run seen so far. ``version`` grows with each change, so every browser tab can
    tell whether to redraw, although the supervisor hands each new event out only once."""

    steps: list[Step] = field(default_factory=list)
    vals: list[Val] = field(default_factory=list)
    error: Error | None = None
    band: tuple[float, float] | None = None
    version: int = 0


class RunHistory:
    """Server-side, shared by all sessions: polls from several tabs must not split a run's events between them."""

    def __init__(self) -> None:
        self._records: dict[Path, RunRecord] = {}
        self._lock = threading.Lock()

    def feed(self, snap: RunSnapshot) -> RunRecord:
        with self._lock:
            if snap.run_dir not in self._records:
                self._records[snap.run_dir] = RunRecord(band=preset_band(read_preset(snap.run_dir)))
            record = self._records[snap.run_dir]
            for event in snap.events:
                match event:
                    case Step():
                        record.steps.append(event)
                    case Val():
                        record.vals.append(event)
                    case Error():
                        record.error = event
                    case Start() if not record.steps:
                        record.error = None
                        # A resumed run draws the curve from step 1: the earlier run's points up to the resume step.
                        record.steps, record.vals = earlier_curve(event.resumed_from, event.start_step)
            if snap.changed:
                record.version += 1
            return record


@dataclass
class AppContext:
    settings: Settings
    supervisor: JobSupervisor
    specs: list[FieldSpec]
    components: dict[str, Any]  # field name -> unrendered Gradio component (rendered by the tabs)
    preset: Any = None  # gr.State: the preset this page last applied, as preset_record() made it (or None)
    # gr.State: {field name: one-line message} for the form's invalid fields; {} when the form may start a run.
    # The Model tab's field checks write it; the Train tab's buttons listen to its .change.
    form_errors: Any = None
    device: Any = None  # app.device.DeviceProbe: its line says whether this computer has a CUDA GPU
    history: RunHistory = field(default_factory=RunHistory)

    @property
    def form_inputs(self) -> list[Any]:
        """Form components in field order (outputs of preset/load handlers)."""
        return [self.components[s.name] for s in self.specs]

    def form_kwargs(self, **extra: Any) -> dict[str, Any]:
        """``inputs_kwargs`` for a form_handler: every field by name, plus extra components."""
        return {**{s.name: self.components[s.name] for s in self.specs}, **extra}


def preset_band(preset: dict[str, Any] | None) -> tuple[float, float] | None:
    return PresetInfo.from_record(preset).loss_band if preset else None


def form_handler(fn: Callable[[dict[str, Any]], Any], names: list[str]) -> Callable[..., Any]:
    """Wrap ``fn(values: dict)`` as a Gradio handler whose API parameters are the field names, each optional.

    Gradio names API parameters after the handler's signature; a ``**values`` handler would get param_0..N and no
    defaults, so the client could not call ``predict(max_train_steps=5, api_name="/start_run")``."""

    def handler(**values):  # type: ignore[no-untyped-def]
        return fn(values)

    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in names]
    handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    handler.__name__ = handler.__qualname__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler
