"""The export self-check's result as data: what a run records about each saved LoRA and the UI shows.

``training.lora_files.self_check`` fills a ``SelfCheck`` in while it checks a file. The loop writes ``to_event()`` into
the ``checkpoint`` event as ``check_result``, next to ``check`` (the ``summary()`` sentence, kept for the console and
for readers older than the record). Readers get the record back with ``from_event``, so nobody parses the sentence.
Torch-free: the UI imports this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# kohya key prefixes (lora_<part>_...) as a person reads them.
PART_LABELS = {"unet": "UNet", "te": "text encoder", "te1": "text encoder 1", "te2": "text encoder 2"}
EVENT_LIST_LIMIT = 20  # problems/warnings kept in an event: enough to act on, without one huge log line
DRY_RUN_SUMMARY = "dry run: placeholder file without tensors"


def module_part(module: str) -> str:
    """The part a kohya module name belongs to: ``lora_te1_text_model_...`` -> ``te1``."""
    return module.split("_", 2)[1] if module.count("_") >= 2 else module


@dataclass
class PartCount:
    """Modules of one part (UNet or one text encoder): how many the file holds, how many passed."""

    expected: int = 0
    matched: int = 0


@dataclass
class SelfCheck:
    """Is a saved LoRA a file every loader applies in full? ``ok`` only when every rule held."""

    expected: int = 0  # modules in the file: each should apply to a module of the base model
    matched: int = 0   # modules that passed every per-module rule, named in the family's canonical convention
    parts: dict[str, PartCount] = field(default_factory=dict)  # the same two counts per kohya prefix
    problems: list[str] = field(default_factory=list)  # one readable line per failed rule
    warnings: list[str] = field(default_factory=list)  # worth knowing, not a failure (e.g. an untrained module)
    dry_run: bool = False  # a dry run's placeholder file: nothing was checked
    kinds: dict[str, int] = field(default_factory=dict)  # matched modules per target kind: "linear", "conv"

    @property
    def missing(self) -> int:
        """Modules WebUIs will skip or apply wrongly."""
        return self.expected - self.matched

    @property
    def ok(self) -> bool:
        return not self.problems and not self.dry_run

    def count_modules(self, modules: Iterable[str], matched: Iterable[str]) -> None:
        """Set the counts, overall and per part, from the file's module names and those that passed."""
        expected, passed = Counter(map(module_part, modules)), Counter(map(module_part, matched))
        order = [*PART_LABELS, *sorted(set(expected) - set(PART_LABELS))]  # UNet first, as the UI lists them
        self.parts = {part: PartCount(expected[part], passed[part]) for part in order if part in expected}
        self.expected, self.matched = sum(expected.values()), sum(passed.values())

    def summary(self) -> str:
        """One sentence, the ``check`` text of the checkpoint event: "60 of 60 modules matched (56 linear, 4 conv)"."""
        if self.dry_run:
            return DRY_RUN_SUMMARY
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.kinds.items())
        return f"{self.matched} of {self.expected} modules matched" + (f" ({kinds})" if kinds else "")

    def parts_text(self) -> str:
        """ "UNet 48 of 48, text encoder 12 of 12" ("" when the file has no modules)."""
        return ", ".join(f"{PART_LABELS.get(part, part)} {c.matched} of {c.expected}" for part, c in self.parts.items())

    def to_event(self) -> dict[str, Any]:
        """The ``check_result`` field of a checkpoint event (plain JSON values)."""
        event = {"expected": self.expected, "matched": self.matched, "missing": self.missing, "ok": self.ok,
                 "parts": {part: {"expected": c.expected, "matched": c.matched} for part, c in self.parts.items()},
                 "problems": _capped(self.problems), "warnings": _capped(self.warnings), "dry_run": self.dry_run}
        return {**event, "kinds": dict(self.kinds)} if self.kinds else event  # older readers never see the key

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> SelfCheck | None:
        """The record a checkpoint event carries; None for events written before ``check_result`` existed."""
        data = event.get("check_result")
        if not isinstance(data, Mapping):
            return None
        parts = data.get("parts") if isinstance(data.get("parts"), Mapping) else {}
        return cls(int(data.get("expected") or 0), int(data.get("matched") or 0),
                   {str(p): PartCount(int(c.get("expected") or 0), int(c.get("matched") or 0))
                    for p, c in parts.items() if isinstance(c, Mapping)},
                   [str(p) for p in data.get("problems") or []], [str(w) for w in data.get("warnings") or []],
                   bool(data.get("dry_run")),
                   {str(k): int(n) for k, n in (data.get("kinds") or {}).items()} if isinstance(data.get("kinds"),
                                                                                            Mapping) else {})

    @classmethod
    def placeholder(cls) -> SelfCheck:
        """What a dry run records for its placeholder files: honestly nothing checked."""
        return cls(dry_run=True)


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= EVENT_LIST_LIMIT:
        return list(lines)
    return [*lines[:EVENT_LIST_LIMIT], f"… and {len(lines) - EVENT_LIST_LIMIT} more"]
