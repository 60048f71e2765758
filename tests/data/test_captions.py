"""Caption shuffle / keep_tokens / dropout, and the dataset's per-sample seeding."""

from __future__ import annotations

import random

from tiny_models import make_image_dataset

from training.data.captions import process_caption
from training.data.dataset import TrainDataset
from training.data.folder import scan_dataset
from training.data.subset import SubsetOptions

CAPTION = "sks girl, red hair, blue eyes, smiling, outdoors, hat, scarf, night"


def _run(seed: int, **kw) -> str:
    opts = {"shuffle": True, "keep_tokens": 0, "dropout_rate": 0.0} | kw
    return process_caption(CAPTION, rng=random.Random(seed), **opts)


def test_keep_tokens_stay_in_front_while_the_rest_shuffles():
    outs = {_run(s, keep_tokens=1) for s in range(30)}
    assert len(outs) > 5  # the rest really is shuffled
    for out in outs:
        tags = out.split(", ")
        assert tags[0] == "sks girl"
        assert sorted(tags) == sorted(t.strip() for t in CAPTION.split(","))
    assert all(o.split(", ")[:2] == ["sks girl", "red hair"] for o in {_run(s, keep_tokens=2) for s in range(10)})


def test_without_keep_tokens_any_tag_can_come_first():
    firsts = {_run(s, keep_tokens=0).split(", ")[0] for s in range(30)}
    assert len(firsts) > 3


def test_shuffle_is_deterministic_for_a_seed():
    assert _run(7) == _run(7)
    assert len({_run(s) for s in range(10)}) > 1


def test_no_shuffle_returns_caption_unchanged():
    text = "a girl, smiling.  In the rain"
    assert process_caption(text, shuffle=False, keep_tokens=1, dropout_rate=0.0, rng=random.Random(0)) == text


def test_dropout():
    assert all(_run(s, dropout_rate=1.0) == "" for s in range(10))
    assert all(_run(s, dropout_rate=0.0) != "" for s in range(10))
    dropped = sum(_run(s, dropout_rate=0.3) == "" for s in range(1000))
    assert 220 < dropped < 380


def test_stray_commas_are_dropped_when_shuffling():
    out = process_caption("a,, b ,", shuffle=True, keep_tokens=0, dropout_rate=0.0, rng=random.Random(1))
    assert sorted(out.split(", ")) == ["a", "b"]


def test_dataset_augmentation_is_seeded_per_epoch_and_index(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"3_red": 2})
    scan = scan_dataset(root)
    kw = {"resolution": 64, "options": SubsetOptions(shuffle_caption=True, keep_tokens=1, flip_aug=True), "seed": 5}
    a, b = TrainDataset(scan, **kw), TrainDataset(scan, **kw)
    assert len(a) == 6  # repeats expanded

    def epoch_view(ds, epoch):
        ds.set_epoch(epoch)
        return [(s["caption"], s["crop_top_left"], s["pixel_values"].sum().item()) for s in (ds[i] for i in range(6))]

    assert epoch_view(a, 0) == epoch_view(b, 0)
    assert epoch_view(a, 3) == epoch_view(b, 3)  # no state carried over: resuming at epoch 3 gives epoch 3
    assert epoch_view(a, 0) != epoch_view(a, 1)
    assert all(s[0].startswith("red, ") for s in epoch_view(a, 2))
