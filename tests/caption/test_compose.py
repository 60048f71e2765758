"""The caption written: trigger first and once, excluded tags out, and the four ways with an existing caption."""

from __future__ import annotations

import pytest

from training.caption.compose import ComposeOptions, compose, parse_tag_list


def tags(existing: str = "", mode: str = "skip", trigger: str = "", exclude: str = "",
         new: tuple[str, ...] = ("red hair", "smile")) -> str | None:
    options = ComposeOptions(existing=mode, trigger=trigger, exclude=parse_tag_list(exclude))
    return compose(list(new), existing, options, splits_tags=True)


def test_the_trigger_comes_first_and_once():
    assert tags(trigger="zkz") == "zkz, red hair, smile"
    assert tags(trigger="Red_Hair") == "Red_Hair, smile", "a tag equal to the trigger is not repeated"


def test_excluded_tags_are_left_out_whatever_their_spelling():
    assert tags(exclude="RED_HAIR, nothing") == "smile"
    assert tags(new=("hat \\(object\\)", "smile"), exclude="hat (object)") == "smile"


@pytest.mark.parametrize(("mode", "expected"), [
    ("skip", None),
    ("overwrite", "red hair, smile"),
    ("append", "old tag, smile, red hair"),
    ("prepend", "red hair, smile, old tag"),
])
def test_an_existing_caption(mode, expected):
    assert tags(existing="old tag, smile", mode=mode) == expected


def test_append_keeps_the_trigger_first():
    assert tags(existing="old tag", mode="append", trigger="zkz") == "zkz, old tag, red hair, smile"
    assert tags(existing="zkz, old tag", mode="prepend", trigger="zkz") == "zkz, red hair, smile, old tag"


def test_an_empty_caption_file_counts_as_none():
    assert tags(existing="  \n ", mode="skip") == "red hair, smile"


def test_a_sentence_stays_whole():
    options = ComposeOptions(existing="append", trigger="zkz")
    sentence = ["a cat, sitting on a mat"]
    assert compose(sentence, "", options, splits_tags=False) == "zkz, a cat, sitting on a mat"
    assert compose(sentence, "old", options, splits_tags=False) == "zkz, old, a cat, sitting on a mat"


def test_exclude_does_not_cut_words_out_of_a_sentence():
    options = ComposeOptions(existing="overwrite", exclude=parse_tag_list("a cat"))
    assert compose(["a cat"], "", options, splits_tags=False) == "a cat"
