"""Sentence captioners loaded offline from folders: a tiny random BLIP and a tiny Florence-2 (transformers'
native class), and the one-line refusals (remote code, a model that is no captioner)."""

from __future__ import annotations

import json

import pytest
from caption_helpers import red
from PIL import Image

from training.caption.captioner import CaptionOptions, load_captioner
from training.caption.tiny import _WORDS, save_tiny_chat_vlm
from training.contract.errors import UserError


def words_of(caption: str) -> set[str]:
    return set(caption.split())


def test_a_tiny_blip_captions_a_batch_offline(tiny_blip):
    captioner = load_captioner(tiny_blip, CaptionOptions(max_new_tokens=5))
    assert captioner.style == "blip"
    assert str(captioner.model.dtype) == "torch.float32", "float32 on the CPU"
    one = captioner.describe([red()])
    batch = captioner.describe([red(), Image.new("RGB", (20, 40), (0, 0, 255))])
    assert len(one) == 1 and len(batch) == 2
    assert all(len(parts) == 1 and parts[0] for parts in batch)
    assert words_of(batch[0][0]) <= set(_WORDS), batch
    assert 3 <= len(batch[0][0].split()) <= 5, "min_new_tokens of the tiny model, max_new_tokens of the option"
    assert one[0] == batch[0], "batching does not change a caption"


def test_a_tiny_florence2_runs_its_task_prompt(tiny_florence2):
    captioner = load_captioner(tiny_florence2, CaptionOptions(max_new_tokens=4))
    assert captioner.style == "florence2" and captioner.prompt == "<DETAILED_CAPTION>"
    (caption,), (other,) = captioner.describe([red(), Image.new("RGB", (64, 32), (0, 255, 0))])
    assert caption and words_of(caption) <= set(_WORDS)
    assert other


def test_a_chat_model_gets_the_prompt_and_answers_without_repeating_it(tmp_path):
    folder = save_tiny_chat_vlm(tmp_path / "chat")
    captioner = load_captioner(folder, CaptionOptions(prompt="describe this image", max_new_tokens=4))
    assert captioner.style == "chat"
    single = captioner.describe([red()])
    batch = captioner.describe([red(), Image.new("RGB", (30, 20), (0, 0, 255))])
    caption = batch[0][0]
    assert not caption.startswith("user"), "the chat prompt is cut off the answer"
    assert 3 <= len(caption.split()) <= 4
    assert single[0] == batch[0], "batching does not change a caption"


def test_a_model_that_needs_remote_code_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my_custom_vlm", "auto_map": {"AutoModelForCausalLM": "modeling_custom.Model"}}))
    with pytest.raises(UserError, match=r"needs code from its own repository.*--trust-remote-code") as err:
        load_captioner(folder, CaptionOptions())
    assert "\n" not in str(err.value)


def test_a_model_that_is_not_a_captioner_is_refused(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="is a bert, not an image captioner"):
        load_captioner(folder, CaptionOptions())
