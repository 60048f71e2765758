"""The sample-prompt editor's table: rows of prompt, negative prompt, size, steps, CFG and seed, read from and written
to the ``sample_prompts`` setting in kohya's line syntax (``a cat --n blurry --w 512 --h 512 --s 20 --l 7 --d 1``).

No Gradio: app/tabs/prompt_editor.py shows the rows. An empty cell is an option left out, so it keeps meaning the
trainer's default (the training resolution, 28 steps, CFG 7, seed 1234 + the prompt's position), as in a prompt file.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.atomic import write_atomic
from training.contract.errors import UserError
from training.contract.prompts import format_prompt_line, prompt_lines, split_prompt_line

PROMPTS_DIR = "sample-prompts"  # under the data folder: prompt files the editor writes


@dataclass(frozen=True)
class Column:
    header: str
    flag: str | None  # kohya's option letter; None for the prompt itself
    number: type | None = None  # int or float: what the cell must hold when it is not empty


COLUMNS = (Column("Prompt", None), Column("Negative prompt", "n"), Column("Width", "w", int),
           Column("Height", "h", int), Column("Steps", "s", int), Column("CFG scale", "l", float),
           Column("Seed", "d", int))
HEADERS = [c.header for c in COLUMNS]


def _cell(value: Any) -> str:
    """A table cell as text: the browser may send numbers, None or NaN for cells the user left empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def line_to_row(line: str) -> list[str]:
    prompt, options = split_prompt_line(line)
    return [prompt, *(options.get(c.flag, "") for c in COLUMNS[1:])]


def row_to_line(row: list[Any], number: int) -> str | None:
    """kohya's line for one row (number counts from 1, for messages); None for an empty row. A UserError names the
    row and column of a cell that is not a number, or a row with options and no prompt."""
    cells = [_cell(v) for v in list(row) + [""] * (len(COLUMNS) - len(row))]
    if not any(cells):
        return None
    for column, text in zip(COLUMNS, cells, strict=False):
        if column.number and text:
            _check_number(text, column, number)
    if not cells[0]:
        raise UserError(f"sample prompt row {number}: the prompt is empty; write one or clear the row")
    return format_prompt_line(cells[0], {c.flag: text for c, text in zip(COLUMNS[1:], cells[1:], strict=False)})


def _check_number(text: str, column: Column, number: int) -> None:
    try:
        value = column.number(text)
    except ValueError:
        kind = "a whole number" if column.number is int else "a number"
        raise UserError(f"sample prompt row {number}, {column.header}: {text!r} is not {kind}") from None
    if value < 0 or (column.flag in "whs" and value == 0):
        raise UserError(f"sample prompt row {number}, {column.header}: {text} must be more than 0")


def rows_from_setting(value: str | None) -> list[list[str]]:
    """The table for a sample_prompts value (a prompt file, or prompts split by ';'). A UserError for a file that
    is not there."""
    return [line_to_row(line) for line in prompt_lines((value or "").strip() or None)]


def rows_to_lines(rows: list[list[Any]]) -> list[str]:
    return [line for i, row in enumerate(rows, 1) if (line := row_to_line(row, i)) is not None]


def setting_from_rows(rows: list[list[Any]], data_dir: Path) -> str:
    """The sample_prompts value for the table: the lines split by ';' when that reads back the same, else (a ';'
    inside a prompt) a prompt file under data_dir, named by its content so it never replaces another table's."""
    lines = rows_to_lines(rows)
    if not any(";" in line for line in lines):
        return "; ".join(lines)
    text = "\n".join(lines) + "\n"
    path = data_dir / PROMPTS_DIR / f"prompts-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:10]}.txt"
    if not path.is_file():
        write_atomic(path, text)
    return str(path)
