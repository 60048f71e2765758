"""What ``python -m training.caption --events`` writes reads back through training.contract.caption_events, the
typed reader the UI uses; and the reader hands out each complete line once, never half a line."""

from __future__ import annotations

from caption_helpers import run_caption

from training.contract.caption_events import (
    CaptionDone,
    CaptionError,
    CaptionEventReader,
    CaptionProgress,
    CaptionStart,
)


def test_what_the_cli_writes_parses_as_typed_events(red_dataset, tiny_tagger, tmp_path):
    events = tmp_path / "events.jsonl"
    result = run_caption(red_dataset, "--tagger", tiny_tagger, "--trigger", "alice", "--events", events)
    assert result.returncode == 0, result.stderr
    read = CaptionEventReader(events).read_new()
    assert [type(e) for e in read] == [CaptionStart, CaptionProgress, CaptionProgress, CaptionProgress, CaptionDone]
    assert read[0].total == 3 and not read[0].dry_run
    assert [e.done for e in read[1:4]] == [1, 2, 3]
    assert all(e.status == "written" and e.caption.startswith("alice, ") for e in read[1:4])
    assert read[-1] == CaptionDone(written=3, skipped=0, failed=0, stopped=False, seconds=read[-1].seconds)


def test_an_error_event_parses(red_dataset, tmp_path):
    events = tmp_path / "events.jsonl"
    result = run_caption(red_dataset, "--tagger", tmp_path / "missing", "--events", events)
    assert result.returncode == 2
    (error,) = CaptionEventReader(events).read_new()
    assert isinstance(error, CaptionError) and "missing" in error.msg


def test_the_reader_waits_for_a_line_to_be_complete(tmp_path):
    events = tmp_path / "events.jsonl"
    reader = CaptionEventReader(events)
    assert reader.read_new() == []  # no file yet
    events.write_text('{"event": "start", "total": 2}\n{"event": "progress", "done": 1, "tot', encoding="utf-8")
    assert reader.read_new() == [CaptionStart(total=2)]
    with open(events, "a", encoding="utf-8") as f:
        f.write('al": 2, "path": "a.png", "status": "written", "caption": "x"}\n{"event": "newer_kind"}\n')
    assert reader.read_new() == [CaptionProgress(1, 2, "a.png", "written", "x")]
    assert reader.read_new() == []
