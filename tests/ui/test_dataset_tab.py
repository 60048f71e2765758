"""The Dataset tab's public endpoints through gradio_client, on the in-process app (one browser session each)."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image
from ui_helpers import NOISE_FILTERS

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]

# /dataset_load outputs: train_data_dir (the dataset folder box), message, gallery, page, preview, position, caption
# file, caption, caption message, chips, tags, filter, filter message, report (the session state is not part of the
# API).
FOLDER, MESSAGE, GALLERY, PAGE, TAGS, FILTER = 0, 1, 2, 3, 10, 11
# /bulk_* outputs: the bulk message, then what selecting an image redraws (gallery, page, preview, position, caption
# file, caption, caption message, chips, tags, filter, filter message).
BULK_TAGS = 9


def plain(markdown: str) -> str:
    """The text a reader sees: messages escape markdown characters of paths (my_cat.png must not turn italic)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def shown(gallery: dict) -> list[dict]:
    """The gallery's images from an output: an update that also says which thumbnail is selected."""
    assert gallery["selected_index"] is None  # an API call selects nothing
    return gallery["value"]


def img(path: Path, size=(96, 64), colour=(180, 60, 20), caption: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Two concepts: 10_cat (two captioned 512 px images), 2_dog (one 64 px image without caption)."""
    img(tmp_path / "ds" / "10_cat" / "a.png", (512, 512), (200, 30, 30), "cat, sitting")
    img(tmp_path / "ds" / "10_cat" / "b.png", (512, 768), (30, 200, 30), "cat, standing")
    img(tmp_path / "ds" / "2_dog" / "c.png", (64, 64), (30, 30, 200))
    return tmp_path / "ds"


@pytest.fixture
def client(dry_app) -> Client:
    return Client(dry_app.url, verbose=False)


def test_dataset_endpoints_are_public(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/dataset_load", "/caption_save", "/dataset_check", "/bulk_trigger", "/bulk_remove", "/bulk_replace",
            "/dataset_upload"} <= set(api)
    check = {p["parameter_name"] for p in api["/dataset_check"]["parameters"]}
    assert {"train_data_dir", "resolution", "train_batch_size", "max_train_epochs", "gradient_accumulation_steps",
            "caption_extension", "enable_bucket", "min_bucket_reso"} <= check


def test_load_shows_thumbnails_and_sets_train_data_dir(client, dataset, dry_app):
    out = client.predict(str(dataset), api_name="/dataset_load")
    assert out[FOLDER] == str(dataset.resolve())
    assert "3 image(s) in 2 concept folder(s) (10\\_cat ×10: 2, 2\\_dog ×2: 1)" in out[MESSAGE]
    assert [item["caption"] for item in shown(out[GALLERY])] == [
        "10_cat/a.png: cat, sitting", "10_cat/b.png: cat, standing", "2_dog/c.png: (no caption)"]
    for item in shown(out[GALLERY]):
        with Image.open(item["image"]) as thumb:
            assert max(thumb.size) <= 256  # thumbnails, never the originals
    thumbs = dry_app.settings.data_dir / "cache" / "thumbs"
    assert len(list(thumbs.glob("*.jpg"))) >= 3
    assert out[PAGE] == "Page 1 of 1 · 3 image(s)"
    assert out[TAGS]["data"] == [["cat", 2], ["sitting", 1], ["standing", 1]]
    assert out[FILTER]["choices"] == [["cat · 2", "cat"], ["sitting · 1", "sitting"], ["standing · 1", "standing"]]


def test_bad_folders_give_one_visible_line(client, tmp_path):
    missing = client.predict(str(tmp_path / "nope"), api_name="/dataset_load")
    assert plain(missing[MESSAGE]) == f"**Not loaded:** folder not found: {tmp_path / 'nope'}"
    assert shown(missing[GALLERY]) == [] and not isinstance(missing[FOLDER], str)  # the box keeps what was typed
    (tmp_path / "empty" / "10_x").mkdir(parents=True)
    empty = client.predict(str(tmp_path / "empty"), api_name="/dataset_load")
    assert plain(empty[MESSAGE]).startswith(f"**Not loaded:** no training images in {tmp_path / 'empty'}: put images")
    assert "\n" not in empty[MESSAGE]


def test_caption_save_writes_beside_the_image_only_in_the_loaded_folder(client, dataset):
    client.predict(str(dataset), api_name="/dataset_load")
    message, gallery, tags, *_ = client.predict(image="2_dog/c.png", caption="dog, lying down",
                                                api_name="/caption_save")
    assert message == "Saved c.txt."
    assert (dataset / "2_dog" / "c.txt").read_text(encoding="utf-8") == "dog, lying down"
    assert shown(gallery)[2]["caption"] == "2_dog/c.png: dog, lying down"
    assert ["dog", 1] in tags["data"]

    assert client.predict(image="", caption="x", api_name="/caption_save")[0] == (
        "**Not saved:** no image selected: click one in the gallery first")
    outside = client.predict(image="../../../etc/x.png", caption="x", api_name="/caption_save")[0]
    assert plain(outside).startswith("**Not saved:** '../../../etc/x.png' is not an image of the loaded folder")
    fresh = Client(client.src, verbose=False)  # a new session has nothing loaded
    assert fresh.predict(image="2_dog/c.png", caption="x", api_name="/caption_save")[0] == (
        "**Not saved:** no folder loaded: load a dataset folder first")


def test_bulk_tools_change_every_caption_and_say_how_many(client, dataset):
    client.predict(str(dataset), api_name="/dataset_load")
    out = client.predict(word="sks", api_name="/bulk_trigger")
    assert out[0] == "Added 'sks' to 3 of 3 caption(s)"
    assert ["sks", 3] in out[BULK_TAGS]["data"]
    assert (dataset / "2_dog" / "c.txt").read_text() == "sks"
    message = client.predict(find="cat", replace="kitty", api_name="/bulk_replace")[0]
    assert message == "Replaced 'cat' in 2 of 3 caption(s)"
    assert (dataset / "10_cat" / "b.txt").read_text() == "sks, kitty, standing"
    assert client.predict(word="sks", api_name="/bulk_remove")[0] == "Removed 'sks' from 3 of 3 caption(s)"
    assert (dataset / "10_cat" / "a.txt").read_text() == "kitty, sitting"
    assert client.predict(find="", replace="x", api_name="/bulk_replace")[0].startswith("**Nothing changed:**")


def test_check_uses_the_form_settings(client, dataset):
    report = client.predict(train_data_dir=str(dataset), train_batch_size=2, max_train_epochs=4,
                            api_name="/dataset_check")
    # 2 cat images x 10 + 1 dog x 2 = 22; two buckets (512x512: 10 -> 5 batches, 512x768: 10 -> 5) + the tiny dog
    # image's own 64x64 bucket (2 -> 1 batch) = 11 batches; x 4 epochs = 44 steps.
    assert "2 × 10 (10\\_cat) + 1 × 2 (2\\_dog) = 22 per epoch" in report
    assert "→ 11 batches per epoch" in report and "**44 steps**" in report
    assert "c.png (64x64, trains in a 64x64 bucket)" in report
    assert "no (or an empty) .txt caption" in report
    assert plain(client.predict(train_data_dir=str(dataset / "gone"), api_name="/dataset_check")) == (
        f"**Not checked:** training data folder not found: {dataset / 'gone'}")
    assert plain(client.predict(train_data_dir=str(dataset), bucket_reso_steps=60, api_name="/dataset_check")
                 ).startswith("**Not checked:** bucket_reso_steps must be a positive multiple of 8")


def test_upload_images_and_zip_into_a_managed_dataset(client, tmp_path, dry_app):
    photo = img(tmp_path / "up" / "photo.png", caption="fox")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(photo, "inner/photo.png")
        zf.write(tmp_path / "up" / "photo.txt", "inner/photo.txt")
        zf.writestr("../escape.png", b"x")
    out = client.predict(files=[handle_file(photo), handle_file(photo.with_suffix(".txt")), handle_file(archive)],
                         name="foxes", repeats=6, concept="fox", api_name="/dataset_upload")
    root = dry_app.settings.data_dir / "datasets" / "foxes"
    assert sorted(p.name for p in (root / "6_fox").iterdir()) == ["photo.png", "photo.txt", "photo_2.png",
                                                                  "photo_2.txt"]
    message = plain(out[2])
    assert message.startswith(f"Imported 2 image(s) and 2 caption(s) into {root} (6_fox)")
    assert "../escape.png (path leaves the zip's folder)" in message
    assert out[1] == str(root)  # train_data_dir, the dataset folder box, now points at the new dataset
    assert len(shown(out[3])) == 2  # gallery

    refused = client.predict(files=[handle_file(photo)], name="foxes", repeats=0, concept="fox",
                             api_name="/dataset_upload")
    assert plain(refused[2]) == "**Not imported:** repeats must be a whole number from 1 to 1000, got 0"


def test_gradio_keeps_its_files_in_the_data_folder_emptied_at_startup(tmp_path, monkeypatch):
    from app.main import build_app
    from app.settings import Settings
    from app.supervisor import JobSupervisor

    monkeypatch.setenv("GRADIO_TEMP_DIR", os.environ.get("GRADIO_TEMP_DIR", ""))  # restored for the served app
    settings = Settings(data_dir=tmp_path / "data", open_browser=False, dry_run=True)
    stale = settings.data_dir / "cache" / "gradio" / "0123abcd" / "left-over.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an upload from the last session")
    build_app(settings, JobSupervisor(settings.data_dir, dry_run=True))
    assert os.environ["GRADIO_TEMP_DIR"] == str(settings.data_dir / "cache" / "gradio")
    assert list((settings.data_dir / "cache" / "gradio").iterdir()) == []


def test_upload_names_bad_images_and_refuses_a_zip_bomb(client, tmp_path, dry_app):
    good = img(tmp_path / "good.png")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a picture")
    out = client.predict(files=[handle_file(good), handle_file(fake)], name="checked", repeats=3, concept="c",
                         api_name="/dataset_upload")
    root = dry_app.settings.data_dir / "datasets" / "checked"
    assert plain(out[2]).startswith(f"Imported 1 image(s) and 0 caption(s) into {root} (3_c); "
                                    "skipped 1: fake.png (not an image)")
    assert sorted(p.name for p in (root / "3_c").iterdir()) == ["good.png"]

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("big.png", "w") as member:
        for _ in range(32):
            member.write(bytes(2**20))
    refused = client.predict(files=[handle_file(bomb)], name="bombed", repeats=3, concept="c",
                             api_name="/dataset_upload")
    assert plain(refused[2]).startswith("**Not imported:** bomb.zip looks like a zip bomb: big.png unpacks to "
                                        "32.0 MiB")
    assert not (dry_app.settings.data_dir / "datasets" / "bombed").exists()
