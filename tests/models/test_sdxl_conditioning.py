"""SDXL conditioning: both text encoders' penultimate layers, encoder 2's pooled output, and add_time_ids per image."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from training.data.dataset import TrainDataset, collate
from training.data.folder import scan_dataset
from training.data.subset import SubsetOptions
from training.models.conditioning import TextEmbeds, unet_kwargs
from training.models.text import encode_prompts, encode_text
from training.run.loop import batch_time_ids


@pytest.fixture(scope="module")
def sdxl():
    from tiny_models import build_tiny_pipeline

    return build_tiny_pipeline("sdxl")


def test_sdxl_text_is_both_penultimate_layers_and_the_pooled_projection(sdxl):
    encoders, tokenizers = [sdxl.text_encoder, sdxl.text_encoder_2], [sdxl.tokenizer, sdxl.tokenizer_2]
    captions = ["a robot", "a red robot, standing"]
    with torch.no_grad():
        embeds = encode_text(encoders, tokenizers, captions)
        ids = [tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
               for tok in tokenizers]
        out1 = sdxl.text_encoder(ids[0], output_hidden_states=True)
        out2 = sdxl.text_encoder_2(ids[1], output_hidden_states=True)
    assert ids[0][0, -1] == 49407 and ids[1][0, -1] == 0  # TE1 pads with <|endoftext|>, TE2 with "!"
    assert torch.equal(embeds.hidden, torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1))
    assert torch.equal(embeds.pooled, out2.text_embeds)  # from the last layer, projected: not clip-skipped
    # What diffusers' own SDXL pipeline computes for the same prompt (its default, clip_skip=None).
    with torch.no_grad():
        ref, _, ref_pooled, _ = sdxl.encode_prompt(captions, do_classifier_free_guidance=False)
    assert torch.allclose(embeds.hidden, ref, atol=1e-6) and torch.allclose(embeds.pooled, ref_pooled, atol=1e-6)


def test_sdxl_clip_skip_2_is_sdxls_default_and_3_goes_one_layer_further(sdxl):
    encoders, tokenizers = [sdxl.text_encoder, sdxl.text_encoder_2], [sdxl.tokenizer, sdxl.tokenizer_2]
    with torch.no_grad():
        one, two, three = (encode_text(encoders, tokenizers, ["a robot"], n) for n in (1, 2, 3))
        ref, _, _, _ = sdxl.encode_prompt(["a robot"], do_classifier_free_guidance=False, clip_skip=1)
    assert torch.equal(one.hidden, two.hidden)
    assert not torch.equal(two.hidden, three.hidden) and torch.equal(two.pooled, three.pooled)
    assert torch.allclose(three.hidden, ref, atol=1e-6)  # diffusers counts from the penultimate: its 1 is our 3


def test_single_encoder_families_are_unchanged(sdxl):
    with torch.no_grad():
        embeds = encode_text([sdxl.text_encoder], [sdxl.tokenizer], ["a robot"], 2)
        direct = encode_prompts(sdxl.text_encoder, sdxl.tokenizer, ["a robot"], 2)
    assert embeds.pooled is None and torch.equal(embeds.hidden, direct)
    assert set(unet_kwargs(embeds, None, torch.float32)) == {"encoder_hidden_states"}


def test_an_sdxl_unet_call_without_time_ids_is_refused():
    embeds = TextEmbeds(torch.zeros(1, 77, 8), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="add_time_ids"):
        unet_kwargs(embeds, None, torch.float32)


def test_add_time_ids_for_a_cropped_bucketed_sample(tmp_path):
    """A 300x200 photo in a 64 px training run: resized to 96x64, centre-cropped 16 px from the left into the 64x64
    bucket (the only one of that area); with a flip the crop is counted from the mirrored image's left edge."""
    folder = tmp_path / "1_cat"
    folder.mkdir()
    Image.new("RGB", (300, 200), "white").save(folder / "a.png")
    Image.new("RGB", (303, 200), "white").save(folder / "b.png")  # 97x64 after resizing: an odd margin
    scan = scan_dataset(tmp_path, ".txt")
    plain = TrainDataset(scan, resolution=64, min_reso=64, max_reso=128, step=64)
    flipped = TrainDataset(scan, resolution=64, min_reso=64, max_reso=128, step=64,
                           options=SubsetOptions(flip_aug=True), seed=1)
    batch = collate([plain[0], plain[1]])
    ids = batch_time_ids(batch)
    assert ids.tolist() == [[200, 300, 0, 16, 64, 64], [200, 303, 0, 16, 64, 64]]
    seen = set()
    for epoch in range(8):
        flipped.set_epoch(epoch)
        seen.add(tuple(batch_time_ids(collate([flipped[1]]))[0].tolist()))
    assert seen == {(200, 303, 0, 16, 64, 64), (200, 303, 0, 17, 64, 64)}
