"""``python -m training.caption`` in real child processes on real files: the summary, the dry run, the --existing
modes, Ctrl+C midway, and bad input as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from caption_helpers import RED_SQUARE_TAGS, ROOT, red, run_caption
from timing import scaled

RED = ", ".join(RED_SQUARE_TAGS)


def captions(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.txt"))}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_tagging_a_kohya_dataset_writes_every_caption_and_a_summary(red_dataset, tiny_tagger):
    (red_dataset / "10_alice" / ".hidden").mkdir()
    red().save(red_dataset / "10_alice" / ".hidden" / "x.png")
    result = run_caption(red_dataset, "--tagger", tiny_tagger, "--trigger", "alice")
    assert result.returncode == 0, result.stderr
    assert captions(red_dataset) == {f"10_alice/{n}.txt": f"alice, {RED}" for n in "ab"} | {
        "3_bob/more/c.txt": f"alice, {RED}"}
    assert "3 written, 0 skipped, 0 failed of 3 image(s)" in result.stdout
    assert not list(red_dataset.rglob(".*.tmp")), "no temporary file left"


def test_a_dry_run_prints_captions_and_writes_nothing(red_dataset, tiny_tagger, tmp_path):
    events = tmp_path / "events.jsonl"
    (red_dataset / "3_bob" / "more" / "c.txt").write_text("mine", encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in red_dataset.rglob("*")}
    result = run_caption(red_dataset, "--tagger", tiny_tagger, "--dry-run", "2", "--events", events)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [f"10_alice/a.png: {RED}", f"10_alice/b.jpg: {RED}"]
    assert "dry run: nothing written; previewed 2 of 2 image(s)" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in red_dataset.rglob("*")} == before, "nothing written or touched"
    kinds = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in kinds] == ["start", "progress", "progress", "done"]
    assert kinds[1]["status"] == "preview" and kinds[1]["caption"] == RED
    everything = run_caption(red_dataset, "--tagger", tiny_tagger, "--dry-run")
    assert "3_bob/more/c.png: (left as it is: has a caption (c.txt))" in everything.stdout
    assert captions(red_dataset) == {"3_bob/more/c.txt": "mine"}


def test_tagging_never_imports_torch_or_transformers(red_dataset, tiny_tagger):
    """Tagging needs only onnxruntime: a process where torch cannot be imported still tags."""
    probe = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"torch", "transformers", "diffusers"}}:
            raise ImportError(name + " is not allowed here")
sys.meta_path.insert(0, Refuse())
from training.caption.__main__ import main
sys.exit(main([{str(red_dataset)!r}, "--tagger", {str(tiny_tagger)!r}]))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                            timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    assert len(captions(red_dataset)) == 3


@pytest.mark.parametrize(("mode", "expected"), [
    ("skip", "old tag, smile"),
    ("overwrite", RED),
    ("append", f"old tag, smile, {RED}"),
    ("prepend", f"{RED}, old tag, smile"),
])
def test_existing_captions(red_dataset, tiny_tagger, mode, expected):
    (red_dataset / "10_alice" / "a.txt").write_text("old tag, smile", encoding="utf-8")
    args = [] if mode == "skip" else ["--existing", mode]  # skip is the default
    result = run_caption(red_dataset, "--tagger", tiny_tagger, *args)
    assert result.returncode == 0, result.stderr
    assert (red_dataset / "10_alice" / "a.txt").read_text(encoding="utf-8") == expected
    assert (red_dataset / "10_alice" / "b.txt").read_text(encoding="utf-8") == RED
    if mode == "skip":
        assert "2 written, 1 skipped" in result.stdout and "10_alice/a.png" in result.stdout


def test_thresholds_rating_and_exclude_from_the_command_line(red_dataset, tiny_tagger):
    result = run_caption(red_dataset, "--tagger", tiny_tagger, "--general-threshold", "0.5",
                         "--character-threshold", "0.95", "--include-rating", "--exclude", "Long_Hair",
                         "--caption-extension", "tags", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert (red_dataset / "3_bob" / "more" / "c.tags").read_text(encoding="utf-8") == "general, red theme, ^_^"
    assert captions(red_dataset) == {}


def test_an_unreadable_image_is_named_and_the_rest_captioned(red_dataset, tiny_tagger):
    (red_dataset / "10_alice" / "broken.png").write_bytes(b"\x89PNG not really")
    result = run_caption(red_dataset, "--tagger", tiny_tagger)
    assert result.returncode == 1
    assert "3 written, 0 skipped, 1 failed" in result.stdout
    assert "failed: 10_alice/broken.png: cannot read image" in result.stdout
    assert not (red_dataset / "10_alice" / "broken.txt").exists()


def test_a_read_only_caption_file_is_named_and_kept(red_dataset, tiny_tagger):
    locked = red_dataset / "10_alice" / "a.txt"
    locked.write_text("mine", encoding="utf-8")
    locked.chmod(0o444)
    result = run_caption(red_dataset, "--tagger", tiny_tagger, "--existing", "overwrite")
    assert result.returncode == 1
    assert "failed: 10_alice/a.png: cannot write a.txt: a.txt is read-only" in result.stdout
    assert locked.read_text(encoding="utf-8") == "mine"
    assert (red_dataset / "10_alice" / "b.txt").read_text(encoding="utf-8") == RED


def test_a_hub_id_while_offline_says_so_and_how_to_use_a_folder(red_dataset, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    line = one_line_error(run_caption(red_dataset, "--tagger", "SmilingWolf/wd-vit-tagger-v3", env=env))
    assert "offline" in line and "not in the Hugging Face cache" in line and "--tagger DIR" in line


def test_a_tagger_folder_given_as_a_captioner_is_one_line(red_dataset, tiny_tagger):
    line = one_line_error(run_caption(red_dataset, "--captioner", tiny_tagger))
    assert f"use --tagger {tiny_tagger}" in line


@pytest.mark.parametrize("missing", ["model.onnx", "selected_tags.csv"])
def test_a_tagger_folder_missing_a_file_names_it(red_dataset, tiny_tagger, tmp_path, missing):
    folder = tmp_path / "partial"
    folder.mkdir()
    for name in {"model.onnx", "selected_tags.csv"} - {missing}:
        (folder / name).write_bytes((tiny_tagger / name).read_bytes())
    assert f"has no {missing}" in one_line_error(run_caption(red_dataset, "--tagger", folder))


def test_a_tagger_whose_outputs_do_not_match_its_tag_list_names_the_files(red_dataset, tiny_tagger, tmp_path):
    folder = tmp_path / "mismatch"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((tiny_tagger / "model.onnx").read_bytes())
    lines = (tiny_tagger / "selected_tags.csv").read_text(encoding="utf-8").splitlines()
    (folder / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    line = one_line_error(run_caption(red_dataset, "--tagger", folder))
    assert "model.onnx gives 11 scores per image but" in line and "selected_tags.csv lists 10 tags" in line


@pytest.mark.parametrize(("args", "message"), [
    (["--general-threshold", "1.5"], "--general-threshold must be between 0 and 1"),
    (["--prompt", "hi"], "--prompt is for --captioner only"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_settings_are_one_line(red_dataset, tiny_tagger, args, message):
    assert message in one_line_error(run_caption(red_dataset, "--tagger", tiny_tagger, *args))


def test_a_missing_dataset_folder_is_one_line_and_an_error_event(tmp_path, tiny_tagger):
    events = tmp_path / "events.jsonl"
    assert "does not exist" in one_line_error(run_caption(tmp_path / "nope", "--tagger", tiny_tagger,
                                                          "--events", events))
    (error,) = read_events(events)
    assert error["event"] == "error" and "does not exist" in error["msg"]


def test_the_stop_file_stops_before_the_next_batch(red_dataset, tiny_tagger, tmp_path):
    stop = tmp_path / "stop"
    stop.touch()
    result = run_caption(red_dataset, "--tagger", tiny_tagger, "--stop-file", stop)
    assert result.returncode == 0, result.stderr
    assert "stopped after 0 of 3 image(s)" in result.stdout
    assert captions(red_dataset) == {}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_stop_midway_keeps_every_caption_written(tmp_path, tiny_tagger, sig):
    """Many large images (hard links to one file) keep the run busy; Ctrl+C (or the UI's SIGTERM) once the first
    caption is written."""
    root = tmp_path / "data" / "1_many"
    root.mkdir(parents=True)
    first = root / "img0000.png"
    red((1600, 1600)).save(first, compress_level=0)
    for i in range(1, 400):
        os.link(first, root / f"img{i:04d}.png")
    events = tmp_path / "events.jsonl"
    child = subprocess.Popen([sys.executable, "-m", "training.caption", str(tmp_path / "data"), "--tagger",
                              str(tiny_tagger), "--events", str(events)], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_written(events, child)
        child.send_signal(sig)
        out, _ = child.communicate(timeout=scaled(60))
    finally:
        child.kill()
    assert child.returncode == 0
    written = [e for e in read_events(events) if e.get("status") == "written"]
    on_disk = sorted(root.glob("*.txt"))
    assert 1 <= len(on_disk) < 400, "stopped midway"
    assert len(on_disk) == len(written)
    assert all(p.read_text(encoding="utf-8") == RED for p in on_disk), "each caption complete"
    assert not list(root.glob(".*.tmp")), "no half-written file left"
    assert "every caption already written is kept" in out
    assert read_events(events)[-1]["event"] == "done" and read_events(events)[-1]["stopped"] is True


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def wait_for_written(events: Path, child: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + scaled(60)
    while not any(e.get("status") == "written" for e in read_events(events)):
        assert child.poll() is None, child.stderr.read() if child.stderr else "the child ended early"
        assert time.monotonic() < deadline, "no caption written in time"
        time.sleep(0.05)


def test_a_tiny_blip_from_a_folder_through_the_command_line(red_dataset, tiny_blip):
    result = run_caption(red_dataset, "--captioner", tiny_blip, "--trigger", "alice", "--max-new-tokens", "4",
                         "--batch-size", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    written = captions(red_dataset)
    assert len(written) == 3 and all(c.startswith("alice, ") and len(c) > len("alice, ") for c in written.values())
