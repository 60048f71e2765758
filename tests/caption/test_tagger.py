"""The WD14 tagger on a tiny ONNX model whose scores are channel means: each test shows exactly which pixels,
in which channel order and scale, reached the model."""

from __future__ import annotations

import numpy as np
import pytest
from caption_helpers import RED_SQUARE_TAGS, TAGGER_SIZE, TAGS, red
from PIL import Image

from training.caption.tagger import TagOptions, Wd14Tagger, preprocess
from training.caption.tags import Thresholds, display_name, is_kaomoji, read_tag_list
from training.caption.tiny import TinyTag, save_tiny_tagger
from training.contract.errors import UserError


@pytest.fixture(scope="module")
def tagger(tiny_tagger) -> Wd14Tagger:
    return Wd14Tagger(tiny_tagger)


def test_a_red_image_is_fed_as_bgr_in_0_255(tagger):
    """Red scores on the model's channel 2 (BGR) at full strength; RGB order would say blue, 0-1 scale nothing."""
    assert tagger.describe([red((30, 30))]) == [RED_SQUARE_TAGS]


def test_the_input_size_comes_from_the_model(tagger):
    assert tagger.size == TAGGER_SIZE
    assert preprocess(red((30, 20)), tagger.size).shape == (TAGGER_SIZE, TAGGER_SIZE, 3)


def test_a_wide_image_is_padded_to_a_square_with_white(tagger):
    """Half the square is white padding: blue and green means are half of 255, red stays full. Black padding would
    halve red (and drop the character tag at 0.45); no padding would leave blue and green at 0."""
    tags = tagger.describe([red((24, 12))])[0]
    assert tags == ["red theme", "character x", "^_^", "long hair", "blue theme", "green theme", "hat (object)"]
    row = preprocess(red((24, 12)), 24)
    assert (row[:6] == 255).all() and (row[18:] == 255).all(), "white bands above and below, centred"
    assert (row[6:18] == [0, 0, 255]).all(), "the image between them, in BGR"


def test_a_tall_image_is_padded_left_and_right():
    row = preprocess(red((12, 24)), 24)
    assert (row[:, :6] == 255).all() and (row[:, 18:] == 255).all()
    assert (row[:, 6:18] == [0, 0, 255]).all()


def test_transparent_pixels_count_as_white(tagger, tmp_path):
    """A fully transparent red image is white as the artist sees it: every channel full."""
    from training.caption.images import open_rgb

    path = tmp_path / "clear.png"
    Image.new("RGBA", (12, 12), (255, 0, 0, 0)).save(path)
    tags = tagger.describe([open_rgb(path)])[0]
    assert tags[:4] == ["red theme", "blue theme", "green theme", "character x"]


def test_the_resize_is_bicubic_and_the_values_unnormalised():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    expected = np.asarray(noise.resize((12, 12), Image.Resampling.BICUBIC), dtype=np.float32)[:, :, ::-1]
    got = preprocess(noise, 12)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert got.max() > 200, "0-255, not 0-1"


def test_thresholds_apply_per_category(tiny_tagger):
    strict = Wd14Tagger(tiny_tagger, TagOptions(Thresholds(general=0.7, character=0.95)))
    assert strict.describe([red()]) == [["red theme", "^_^"]]
    loose = Wd14Tagger(tiny_tagger, TagOptions(Thresholds(general=0.35, character=0.5)))
    assert "almost character" in loose.describe([red()])[0]


def test_the_rating_is_written_only_when_asked(tagger, tiny_tagger):
    assert not {"general", "sensitive"} & set(tagger.describe([red()])[0])
    rated = Wd14Tagger(tiny_tagger, TagOptions(include_rating=True))
    assert rated.describe([red()])[0] == ["general", *RED_SQUARE_TAGS]


def test_parentheses_are_escaped_when_asked(tiny_tagger):
    escaped = Wd14Tagger(tiny_tagger, TagOptions(escape_parentheses=True))
    assert escaped.describe([red()])[0][-1] == "hat \\(object\\)"


def test_a_batch_gives_one_row_per_image_in_order(tagger):
    blue = Image.new("RGB", (12, 12), (0, 0, 255))
    first, second, third = tagger.describe([red(), blue, red()])
    assert first == third == RED_SQUARE_TAGS
    assert second[0] == "blue theme" and "red theme" not in second


def test_a_model_with_a_fixed_batch_of_one_takes_a_batch_one_by_one(tmp_path):
    tagger = Wd14Tagger(save_tiny_tagger(tmp_path / "m", TAGS, size=8, batch=1))
    assert tagger.max_batch == 1
    assert tagger.describe([red(), red((8, 8))]) == [RED_SQUARE_TAGS, RED_SQUARE_TAGS]


@pytest.mark.parametrize(("name", "shown"), [("long_hair", "long hair"), ("^_^", "^_^"), (">_<", ">_<"),
                                             ("0_0", "0_0"), ("(o)_(o)", "(o)_(o)"), ("x_x", "x_x"),
                                             ("hat_(object)", "hat (object)"), ("1girl", "1girl")])
def test_underscores_become_spaces_except_in_kaomoji(name, shown):
    assert display_name(name) == shown
    assert is_kaomoji(name) == (name == shown and "_" in name)


def test_a_missing_file_is_named(tmp_path, tiny_tagger):
    for missing in ("model.onnx", "selected_tags.csv"):
        folder = tmp_path / missing
        folder.mkdir()
        for kept in {"model.onnx", "selected_tags.csv"} - {missing}:
            (folder / kept).write_bytes((tiny_tagger / kept).read_bytes())
        with pytest.raises(UserError, match=f"has no {missing}"):
            Wd14Tagger(folder)


def test_an_output_size_that_does_not_match_the_tag_list_names_both_files(tmp_path):
    folder = save_tiny_tagger(tmp_path / "m", TAGS, extra_outputs=2)
    with pytest.raises(UserError, match=rf"model.onnx gives {len(TAGS) + 2} scores.*selected_tags.csv lists "
                                        rf"{len(TAGS)} tags"):
        Wd14Tagger(folder)


def test_a_tag_list_without_its_columns_is_named(tmp_path):
    path = tmp_path / "selected_tags.csv"
    path.write_text("id,tag\n1,cat\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"selected_tags\.csv must be a csv with the columns"):
        read_tag_list(path)
    path.write_text("tag_id,name,category,count\n1,cat,general,5\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2: category must be a whole number"):
        read_tag_list(path)


def test_a_file_that_is_not_a_model_is_named(tmp_path, tiny_tagger):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a model")
    (folder / "selected_tags.csv").write_bytes((tiny_tagger / "selected_tags.csv").read_bytes())
    with pytest.raises(UserError, match=r"cannot load .*model\.onnx as an ONNX model"):
        Wd14Tagger(folder)


def test_equal_scores_keep_the_tag_lists_order():
    tags = [TinyTag("b_tag", 0, bias=0.5), TinyTag("a_tag", 0, bias=0.5)]
    from training.caption.tags import Tag, pick_tags

    picked = pick_tags([0.5, 0.5], [Tag(t.name, t.category) for t in tags], Thresholds())
    assert [t.name for t, _ in picked] == ["b_tag", "a_tag"]
