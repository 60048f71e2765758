"""The trainer's events reader and the captioner's read their files through one tailer (JsonlTail): the same
file written in pieces gives both readers each complete line once, whatever the bytes in it."""

from __future__ import annotations

import pytest

from training.contract.caption_events import CaptionEventReader, CaptionStart
from training.contract.events import EventReader, Start
from training.contract.jsonl_tail import JsonlTail

# one event each reader knows, as its writer would write it
TRAINER = ('{"v": 1, "event": "start", "total_steps": 4}', lambda e: isinstance(e, Start) and e.total_steps == 4)
CAPTIONER = ('{"event": "start", "total": 4}', lambda e: e == CaptionStart(total=4))
READERS = {
    "trainer": (lambda path: EventReader(path).poll, TRAINER),
    "captioner": (lambda path: CaptionEventReader(path).read_new, CAPTIONER),
}


@pytest.fixture(params=sorted(READERS))
def reader(request, tmp_path):
    make, (line, is_it) = READERS[request.param]
    path = tmp_path / "events.jsonl"
    return path, make(path), line, is_it


def test_a_line_written_in_two_pieces_is_read_once_whole(reader):
    path, poll, line, is_it = reader
    assert poll() == []  # no file yet
    path.write_text(line[:10], encoding="utf-8")
    assert poll() == []  # the writer is mid-line
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[10:] + "\n")
    (event,) = poll()
    assert is_it(event)
    assert poll() == []


def test_a_line_that_is_not_utf8_does_not_stop_the_lines_after_it(reader):
    path, poll, line, is_it = reader
    path.write_bytes(b'{"v": 1, "event": "log", "msg": "\xff\xfe"}\nnot json at all\n\n' + line.encode() + b"\n")
    assert is_it(poll()[-1])


def test_the_tail_gives_blank_free_lines_and_objects_or_none(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n{"b"', encoding="utf-8")
    tail = JsonlTail(path)
    assert tail.new_records() == [{"a": 1}, None]
    assert tail.offset == len('{"a": 1}\n\n[1, 2]\n')  # the half line is read again next time
