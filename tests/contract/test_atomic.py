"""Atomic writes: a failed write leaves the old file whole and no temp file behind; modes stay usable."""

from __future__ import annotations

import stat

import pytest

from training.contract.atomic import atomic_path, write_atomic, write_bytes_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_new_files_are_readable_by_others_and_replaced_files_keep_their_mode(tmp_path):
    lora = tmp_path / "sub" / "x.safetensors"
    write_bytes_atomic(lora, b"abc", fsync=True)
    assert lora.read_bytes() == b"abc" and stat.S_IMODE(lora.stat().st_mode) == 0o644
    caption = tmp_path / "c.txt"
    caption.write_text("x")
    caption.chmod(0o664)
    write_atomic(caption, "y")
    assert caption.read_text() == "y" and stat.S_IMODE(caption.stat().st_mode) == 0o664
