"""A WD14 tagger's tag list (``selected_tags.csv``) and the tags it writes for one image's scores.

The conventions are those of the SmilingWolf WD14 models' own demo, which users compare our output with: category
9 = rating, 0 = general, 4 = character; underscores become spaces except in kaomoji such as ``^_^``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from training.contract.errors import UserError

RATING, GENERAL, CHARACTER = 9, 0, 4
TAGS_FILE = "selected_tags.csv"
# A kaomoji (^_^, >_<, 0_0, (o)_(o)) has no two letters or digits in a row; every real tag with an underscore
# joins words (long_hair), so the run of two is what tells them apart.
_WORDLIKE = re.compile(r"[^\W_]{2}")


@dataclass(frozen=True)
class Tag:
    name: str  # as in the csv, with underscores
    category: int


@dataclass(frozen=True)
class Thresholds:
    general: float = 0.35
    character: float = 0.85

    def for_category(self, category: int) -> float:
        # Categories other than character (artist, copyright, meta in some lists) are held to the general one.
        return self.character if category == CHARACTER else self.general


def read_tag_list(path: Path) -> list[Tag]:
    """The tags of ``selected_tags.csv`` in file order (the order of the model's outputs)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    missing = {"name", "category"} - columns
    if not rows or missing:
        raise UserError(f"{path} must be a csv with the columns tag_id,name,category,count and one row per tag "
                        f"(missing: {', '.join(sorted(missing)) or 'rows'})")
    tags = []
    for line, row in enumerate(rows, start=2):
        try:
            tags.append(Tag(name=row["name"].strip(), category=int(row["category"])))
        except (TypeError, ValueError, AttributeError):
            raise UserError(f"{path}, line {line}: category must be a whole number, got {row['category']!r}") from None
    return tags


def pick_tags(scores: list[float], tags: list[Tag], thresholds: Thresholds,
              include_rating: bool = False) -> list[tuple[Tag, float]]:
    """The tags an image gets, most confident first; with ``include_rating`` its one most likely rating leads."""
    ratings = [(tag, s) for tag, s in zip(tags, scores, strict=True) if tag.category == RATING]
    chosen = [(tag, s) for tag, s in zip(tags, scores, strict=True)
              if tag.category != RATING and s >= thresholds.for_category(tag.category)]
    chosen.sort(key=lambda pair: -pair[1])  # stable: equal scores keep the csv's order
    if include_rating and ratings:
        chosen.insert(0, max(ratings, key=lambda pair: pair[1]))
    return chosen


def is_kaomoji(name: str) -> bool:
    return "_" in name and not _WORDLIKE.search(name)


def display_name(name: str, escape_parentheses: bool = False) -> str:
    """``long_hair`` -> ``long hair``, ``^_^`` unchanged; ``(`` -> ``\\(`` when escaping for WebUI prompts, where
    bare parentheses mean emphasis."""
    text = name if is_kaomoji(name) else name.replace("_", " ")
    if escape_parentheses:
        text = text.replace("(", "\\(").replace(")", "\\)")
    return text
