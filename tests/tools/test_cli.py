"""The command line's own parsing: strengths after the file name, kohya's dynamic methods, one-line usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.tools.__main__ import main
from training.tools.lorafile import parse_strength


@pytest.mark.parametrize(("spec", "want"), [
    ("a.safetensors", (Path("a.safetensors"), 1.0)),
    ("a.safetensors:0.5", (Path("a.safetensors"), 0.5)),
    ("dir/a.safetensors:-1.25", (Path("dir/a.safetensors"), -1.25)),
    ("C:\\loras\\a.safetensors", (Path("C:\\loras\\a.safetensors"), 1.0)),
    ("C:\\loras\\a.safetensors:.8", (Path("C:\\loras\\a.safetensors"), 0.8)),
])
def test_a_strength_follows_the_last_colon(spec, want):
    assert parse_strength(spec) == want


@pytest.mark.parametrize(("args", "words"), [
    (["resize", "--lora", "a.safetensors", "--dynamic", "sv_fro=1.5", "--out", "b.safetensors"], "share in (0, 1]"),
    (["resize", "--lora", "a.safetensors", "--dynamic", "sv_ratio=0.5", "--out", "b.safetensors"], "ratio above 1"),
    (["resize", "--lora", "a.safetensors", "--dynamic", "svd=3", "--out", "b.safetensors"], "expected one of"),
    (["resize", "--lora", "a.safetensors", "--out", "b.safetensors"], "--rank N or --dynamic"),
    (["extract", "--base", "a", "--tuned", "b", "--rank", "4", "--clamp-quantile", "2", "--out", "c"], "quantile"),
    (["merge", "--model", "m.safetensors", "--out", "o.safetensors"], "--lora"),
])
def test_usage_mistakes_are_one_line_with_status_2(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        status = main(args)
        raise SystemExit(status)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
