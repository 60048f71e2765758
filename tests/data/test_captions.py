"""kohya's caption options (shuffle, keep_tokens and its separator, secondary separator, prefix/suffix, wildcards,
caption and tag dropout, token warm-up) and the dataset's per-sample seeding."""

from __future__ import annotations

import math
import random

from tiny_models import make_image_dataset

from training.data.captions import CaptionTime, process_caption
from training.data.dataset import StepClock, TrainDataset
from training.data.folder import scan_dataset
from training.data.sampler import BucketBatchSampler
from training.data.subset import SubsetOptions

CAPTION = "sks girl, red hair, blue eyes, smiling, outdoors, hat, scarf, night"
TAGS = [t.strip() for t in CAPTION.split(",")]


START = CaptionTime()  # epoch 1, step 0


def _run(seed: int, caption: str = CAPTION, time: CaptionTime = START, **options) -> str:
    opts = SubsetOptions(**({"shuffle_caption": True} | options))
    return process_caption(caption, opts, random.Random(seed), time)


def test_keep_tokens_stay_in_front_while_the_rest_shuffles():
    outs = {_run(s, keep_tokens=1) for s in range(30)}
    assert len(outs) > 5  # the rest really is shuffled
    for out in outs:
        tags = out.split(", ")
        assert tags[0] == "sks girl"
        assert sorted(tags) == sorted(TAGS)
    assert all(o.split(", ")[:2] == ["sks girl", "red hair"] for o in {_run(s, keep_tokens=2) for s in range(10)})


def test_without_keep_tokens_any_tag_can_come_first():
    firsts = {_run(s, keep_tokens=0).split(", ")[0] for s in range(30)}
    assert len(firsts) > 3


def test_shuffle_is_deterministic_for_a_seed():
    assert _run(7) == _run(7)
    assert len({_run(s) for s in range(10)}) > 1


def test_no_shuffle_returns_caption_unchanged():
    text = "a girl, smiling.  In the rain"
    assert _run(0, text, shuffle_caption=False, keep_tokens=1) == text


def test_dropout():
    assert all(_run(s, caption_dropout_rate=1.0) == "" for s in range(10))
    assert all(_run(s, caption_dropout_rate=0.0) != "" for s in range(10))
    dropped = sum(_run(s, caption_dropout_rate=0.3) == "" for s in range(1000))
    assert 220 < dropped < 380


def test_stray_commas_are_dropped_when_shuffling():
    assert sorted(_run(1, "a,, b ,").split(", ")) == ["a", "b"]


# --- keep_tokens_separator, secondary_separator ---------------------------------------------------------------------

SEPARATED = "1girl, miku ||| stage, mic, white shirt, smile ||| best quality, rating: general"


def test_keep_tokens_separator_keeps_the_head_and_the_tail_in_place():
    outs = {_run(s, SEPARATED, keep_tokens_separator="|||", keep_tokens=3) for s in range(40)}
    assert len(outs) > 5  # the middle is shuffled
    for out in outs:
        tags = out.split(", ")
        # The separator decides, not keep_tokens = 3: two tags in front, two at the end, no separator left.
        assert tags[:2] == ["1girl", "miku"] and tags[-2:] == ["best quality", "rating: general"]
        assert sorted(tags[2:-2]) == sorted(["stage", "mic", "white shirt", "smile"])


def test_keep_tokens_separator_without_shuffling_is_not_trained_as_text():
    out = _run(0, SEPARATED, shuffle_caption=False, keep_tokens_separator="|||")
    assert out == "1girl, miku, stage, mic, white shirt, smile, best quality, rating: general"


def test_a_caption_without_the_separator_falls_back_to_keep_tokens():
    assert all(_run(s, keep_tokens_separator="|||", keep_tokens=1).startswith("sks girl, ") for s in range(10))


GROUPED = "1girl, upper body, sky;;;cloud;;;day, outdoors, smile"


def test_secondary_separator_shuffles_and_drops_a_group_as_one_tag():
    outs = [_run(s, GROUPED, secondary_separator=";;;", caption_tag_dropout_rate=0.5) for s in range(200)]
    with_group = [o for o in outs if "sky" in o]
    assert 50 < len(with_group) < 150  # dropped about half of the time, as one tag
    # Kept: whole and in its order, rendered with caption_separator (",") between its parts, kohya's rendering.
    assert all(", sky,cloud,day" in o or o.startswith("sky,cloud,day") for o in with_group)
    assert not any("cloud" in o or "day" in o for o in outs if "sky" not in o)
    assert {o.split(", ").index("sky,cloud,day") for o in with_group} >= {0, 1, 2, 3}  # and shuffled as one tag
    assert ";;;" not in "".join(outs)


def test_secondary_separator_is_replaced_without_shuffling_too():
    assert _run(0, GROUPED, shuffle_caption=False, secondary_separator=";;;") == \
        "1girl, upper body, sky,cloud,day, outdoors, smile"


# --- caption_prefix / caption_suffix --------------------------------------------------------------------------------

def test_prefix_and_suffix_are_joined_with_a_space():
    out = _run(0, "a, b", shuffle_caption=False, caption_prefix="masterpiece,", caption_suffix=", night")
    assert out == "masterpiece, a, b , night"


def test_prefix_is_shuffled_with_the_caption_and_counts_toward_keep_tokens():
    firsts = {_run(s, caption_prefix="masterpiece,").split(", ")[0] for s in range(40)}
    assert "masterpiece" in firsts and len(firsts) > 3  # kohya adds it before shuffling: it moves too
    kept = {_run(s, caption_prefix="masterpiece,", keep_tokens=1) for s in range(40)}
    assert all(o.startswith("masterpiece, ") for o in kept)
    assert {o.split(", ")[1] for o in kept} >= {"sks girl", "red hair"}  # the caption's first tag is not kept


def test_prefix_with_the_keep_tokens_separator_stays_in_front():
    outs = {_run(s, "a, b, c", caption_prefix="trigger |||", caption_suffix="||| last",
                 keep_tokens_separator="|||") for s in range(30)}
    assert all(o.startswith("trigger, ") and o.endswith(", last") for o in outs) and len(outs) > 1


# --- enable_wildcard --------------------------------------------------------------------------------------------

def test_wildcards_choose_one_option_per_sample_and_keep_doubled_braces():
    outs = {_run(s, "1girl, {red|blue|green} hair, {{retro}}", shuffle_caption=False, enable_wildcard=True)
            for s in range(60)}
    assert outs == {f"1girl, {c} hair, {{retro}}" for c in ("red", "blue", "green")}
    assert _run(0, "{red|blue} hair", shuffle_caption=False) == "{red|blue} hair"  # off: the text as written


# --- caption_tag_dropout_rate, caption_dropout_every_n_epochs ---------------------------------------------------

def test_tag_dropout_drops_each_flexible_tag_at_the_rate():
    rate, draws = 0.25, 2000
    outs = [_run(s, shuffle_caption=False, caption_tag_dropout_rate=rate, keep_tokens=1) for s in range(draws)]
    assert all(o.startswith("sks girl") for o in outs)  # kept tags are never dropped
    kept = sum(len(o.split(", ")) - 1 for o in outs)
    flexible = len(TAGS) - 1
    share_dropped = 1 - kept / (draws * flexible)
    # Binomial: standard error sqrt(rate (1 - rate) / (draws * flexible)) = 0.0039; six of them.
    assert abs(share_dropped - rate) < 6 * math.sqrt(rate * (1 - rate) / (draws * flexible))
    # Without shuffling the tags that stay keep their order.
    assert all(o.split(", ") == [t for t in TAGS if t in o.split(", ")] for o in outs[:50])
    assert {_run(s, caption_tag_dropout_rate=1.0, keep_tokens=1) for s in range(5)} == {"sks girl"}


def test_every_n_epochs_empties_every_caption_exactly_on_those_epochs():
    every = 3
    for epoch in range(1, 10):
        outs = {_run(s, time=CaptionTime(epoch=epoch), caption_dropout_every_n_epochs=every) for s in range(20)}
        assert (outs == {""}) == (epoch % every == 0), epoch  # epochs 3, 6, 9 (kohya counts from 1)
        assert "" not in outs or epoch % every == 0


# --- token_warmup_min / token_warmup_step ----------------------------------------------------------------------

def test_token_warmup_grows_the_number_of_tags_linearly_to_all_of_them():
    flexible = TAGS[1:]  # keep_tokens = 1: the first tag is always there
    minimum, until = 1, 10
    # kohya: floor(step * (7 - 1) / 10) + 1 flexible tags before step 10, the first ones of the caption; then all 7.
    for step, expected in [(0, 1), (3, 2), (5, 4), (9, 6), (10, 7), (50, 7)]:
        out = _run(0, time=CaptionTime(step=step), shuffle_caption=False, keep_tokens=1,
                   token_warmup_min=minimum, token_warmup_step=until)
        assert out.split(", ") == TAGS[: 1 + expected], step
        # Shuffled: the same tags in some order.
        mixed = _run(step, time=CaptionTime(step=step), keep_tokens=1, token_warmup_min=minimum,
                     token_warmup_step=until)
        assert sorted(mixed.split(", ")[1:]) == sorted(flexible[:expected])


def test_token_warmup_below_one_is_a_share_of_the_run():
    # 0.5 of 20 steps = 10 steps: step 5 keeps floor(5 * 6 / 10) + 1 = 4 flexible tags.
    out = _run(0, time=CaptionTime(step=5, total_steps=20), shuffle_caption=False, keep_tokens=1,
               token_warmup_step=0.5)
    assert out.split(", ") == TAGS[:5]


# --- the dataset: per-sample seeding, the step clock, the captions a text-encoder cache must hold ----------------

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


def test_token_warmup_in_the_dataset_follows_the_step_each_sample_trains_at(tmp_path):
    """The step comes from the epoch's batch order (deterministic), so a resumed run sees the same captions."""
    root = make_image_dataset(tmp_path / "data", {"4_red": 2})  # 8 samples, captions "red, circle, variant i"
    options = SubsetOptions(token_warmup_min=1, token_warmup_step=6)
    ds = TrainDataset(scan_dataset(root), resolution=64, options=options, seed=1)
    sampler = BucketBatchSampler(ds.buckets, batch_size=2, seed=1)
    accumulation, steps_per_epoch = 2, 2  # 4 batches of 2, two batches per optimizer step
    ds.set_clock(StepClock(sampler.batches, steps_per_epoch, accumulation, total_steps=8))
    for epoch in range(3):
        ds.set_epoch(epoch)
        for position, batch in enumerate(sampler.batches(epoch)):
            step = epoch * steps_per_epoch + position // accumulation
            tags = 3 if step >= 6 else math.floor(step * (3 - 1) / 6) + 1
            for index in batch:
                assert len(ds[index]["caption"].split(", ")) == tags, (epoch, position)


def test_fixed_captions_hold_every_caption_a_step_can_ask_for(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"2_red": 2})
    options = SubsetOptions(caption_prefix="sks |||", caption_suffix="||| best", keep_tokens_separator="|||",
                            secondary_separator=";;;", caption_dropout_rate=0.5, caption_dropout_every_n_epochs=2)
    ds = TrainDataset(scan_dataset(root), resolution=64, options=options)
    fixed = ds.fixed_captions()
    assert fixed == {"", "sks, red, circle, variant 0, best", "sks, red, circle, variant 1, best"}
    for epoch in range(4):
        ds.set_epoch(epoch)
        assert {ds[i]["caption"] for i in range(len(ds))} <= fixed
    for varying in ({"shuffle_caption": True}, {"caption_tag_dropout_rate": 0.1}, {"token_warmup_step": 5},
                    {"enable_wildcard": True}):
        assert TrainDataset(scan_dataset(root), resolution=64, options=SubsetOptions(**varying)).fixed_captions() \
            is None, varying


def test_validation_captions_read_like_training_ones_without_their_randomness(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"2_red": 2})
    options = SubsetOptions(shuffle_caption=True, caption_tag_dropout_rate=0.5, caption_dropout_rate=0.5,
                            token_warmup_step=10, enable_wildcard=True, caption_prefix="sks |||",
                            keep_tokens_separator="|||")
    ds = TrainDataset(scan_dataset(root), resolution=64, options=options)
    validation = ds.with_fixed_captions(ds.items)
    # In file order (no shuffle), all tags (no dropout, no warm-up), the prefix's separator not trained as text.
    assert [it.caption for it in validation] == ["sks, red, circle, variant 0", "sks, red, circle, variant 1"]
    assert [it.caption for it in ds.items] == ["red, circle, variant 0", "red, circle, variant 1"]  # untouched
