"""``python -m training.caption`` takes the catalogue's short names (training/contract/captioners.py) in real child
processes: ``--tagger wd-vit-tagger-v3`` is SmilingWolf's hub id, and a known model of the other kind is one line."""

from __future__ import annotations

import os

from caption_helpers import run_caption


def error_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_short_name_is_its_hub_id(red_dataset, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    line = error_line(run_caption(red_dataset, "--tagger", "wd-vit-tagger-v3", env=env))
    # Offline and not cached, it gets the hub's own message for the full id, not "no such folder".
    assert "--tagger SmilingWolf/wd-vit-tagger-v3: the hub is offline" in line
    assert "hf download SmilingWolf/wd-vit-tagger-v3" in line


def test_a_known_model_of_the_other_kind_says_which_option_fits(red_dataset, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    line = error_line(run_caption(red_dataset, "--captioner", "SmilingWolf/wd-vit-tagger-v3", env=env))
    assert "is a tagger, not a captioner: use --tagger SmilingWolf/wd-vit-tagger-v3" in line
    line = error_line(run_caption(red_dataset, "--tagger", "Florence-2-base", env=env))
    assert "florence-community/Florence-2-base is a captioner" in line and "use --captioner Florence-2-base" in line

