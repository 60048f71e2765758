"""The caption written beside an image: the model's words, the trigger first, excluded tags out, and what to do
with a caption that is already there (``--existing``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Existing = Literal["skip", "overwrite", "append", "prepend"]
EXISTING_MODES: tuple[Existing, ...] = ("skip", "overwrite", "append", "prepend")


@dataclass(frozen=True)
class ComposeOptions:
    existing: Existing = "skip"
    trigger: str = ""
    exclude: frozenset[str] = frozenset()  # already normalised (see ``tag_key``)


def tag_key(tag: str) -> str:
    """What makes two tags the same: case, underscores and WebUI escapes aside (``Long_Hair`` is ``long hair``)."""
    return " ".join(tag.replace("\\(", "(").replace("\\)", ")").replace("_", " ").lower().split())


def parse_tag_list(text: str) -> frozenset[str]:
    """``--exclude "tag, tag"`` as normalised keys."""
    return frozenset(tag_key(t) for t in text.split(",") if t.strip())


def split_caption(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def compose(new_parts: list[str], existing: str, options: ComposeOptions, splits_tags: bool) -> str | None:
    """The caption to write, or None to leave the file as it is (``skip`` and a caption already there).

    ``new_parts``: a tagger's tags, or a captioner's one sentence. Parts that repeat (the trigger a tagger also
    found, a tag the existing caption has) are kept once, where they first appear; the trigger always leads.
    """
    existing = " ".join(existing.split())
    if existing and options.existing == "skip":
        return None
    new = [p for p in new_parts if p.strip()]
    if splits_tags:
        new = [p for p in new if tag_key(p) not in options.exclude]
    old = split_caption(existing) if existing and options.existing in ("append", "prepend") else []
    ordered = old + new if options.existing == "append" else new + old
    trigger = options.trigger.strip()
    if trigger:
        ordered = [trigger, *ordered]
    return ", ".join(_unique(ordered))


def _unique(parts: list[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for part in parts:
        key = tag_key(part)
        if key not in seen:
            seen.add(key)
            kept.append(part)
    return kept
