"""The sample-prompt editor's rows against kohya's line syntax: rows -> sample_prompts -> rows gives the same table,
and what the trainer parses from the setting is what the rows say."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.prompt_rows import PROMPTS_DIR, line_to_row, rows_from_setting, setting_from_rows
from training.contract.errors import UserError
from training.contract.prompts import SamplePrompt, load_prompts

ROWS = [
    ["1girl, solo, red dress", "lowres, bad hands", "512", "768", "20", "7.5", "1"],
    ["a cat on a sofa", "", "", "", "12", "", "42"],  # empty cells: the trainer's defaults
]


def test_rows_to_setting_to_rows_is_the_same_table(tmp_path):
    setting = setting_from_rows(ROWS, tmp_path)
    assert setting == ("1girl, solo, red dress --n lowres, bad hands --w 512 --h 768 --s 20 --l 7.5 --d 1; "
                       "a cat on a sofa --s 12 --d 42")
    assert rows_from_setting(setting) == ROWS
    assert not (tmp_path / PROMPTS_DIR).exists()  # inline: nothing written


def test_the_trainer_reads_what_the_rows_say(tmp_path):
    first, second = load_prompts(setting_from_rows(ROWS, tmp_path), (640, 640))
    assert first == SamplePrompt("1girl, solo, red dress", "lowres, bad hands", 512, 768, 1, 7.5, 20)
    assert second == SamplePrompt("a cat on a sofa", "", 640, 640, 42, 7.0, 12)  # size: the training resolution


def test_kohya_lines_in_any_option_order_read_into_rows():
    assert line_to_row("a dog --d 5 --l 4 --n blurry, jpeg --w 320 --s 9 --h 256") == [
        "a dog", "blurry, jpeg", "320", "256", "9", "4", "5"]


def test_a_semicolon_in_a_prompt_goes_to_a_prompt_file_under_the_data_folder(tmp_path):
    rows = [["a; b", "x", "", "", "", "", ""], ["c", "", "", "", "", "", "3"]]
    setting = setting_from_rows(rows, tmp_path)
    path = Path(setting)
    assert path.parent == tmp_path / PROMPTS_DIR and path.read_text(encoding="utf-8") == "a; b --n x\nc --d 3\n"
    assert rows_from_setting(setting) == rows
    assert setting_from_rows(rows, tmp_path) == setting  # same table, same file: nothing piles up
    assert [p.prompt for p in load_prompts(setting, (512, 512))] == ["a; b", "c"]


def test_a_prompt_file_setting_reads_into_rows(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\nred --w 64 --h 64\n\nblue --n green\n", encoding="utf-8")
    assert rows_from_setting(str(path)) == [["red", "", "64", "64", "", "", ""], ["blue", "green", "", "", "", "", ""]]
    with pytest.raises(UserError, match="not found"):
        rows_from_setting(str(tmp_path / "missing.txt"))


def test_empty_rows_are_dropped_and_numbers_from_the_browser_are_cells(tmp_path):
    rows = [["", "", "", "", "", "", ""], ["a cat", None, 512.0, float("nan"), 20, 7.5, 0]]
    assert setting_from_rows(rows, tmp_path) == "a cat --w 512 --s 20 --l 7.5 --d 0"
    assert setting_from_rows([["", "", "", "", "", "", ""]], tmp_path) == ""


@pytest.mark.parametrize(("row", "expected"), [
    (["a cat", "", "wide", "", "", "", ""], "row 1, Width: 'wide' is not a whole number"),
    (["a cat", "", "", "", "", "high", ""], "row 1, CFG scale: 'high' is not a number"),
    (["a cat", "", "", "", "0", "", ""], "row 1, Steps: 0 must be more than 0"),
    (["", "blurry", "", "", "", "", ""], "row 1: the prompt is empty"),
])
def test_a_bad_cell_is_named_by_row_and_column(tmp_path, row, expected):
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        setting_from_rows([row], tmp_path)
