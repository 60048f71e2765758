"""The Results tab through gradio_client, on the in-process app and a data folder holding a real finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image
from ui_helpers import NOISE_FILTERS, open_app, serve, stop_all, wait_for

from app.results import SETTINGS_FILE
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.events import EventWriter

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]

RUN = "tiny/20240101-120000"
STEP_SAVE, FINAL_SAVE = "tiny-step00000010.safetensors", "tiny.safetensors"
SAMPLE = "tiny_000010_00_20240101120000_3.png"


def finished_run(data_dir: Path, model: Path, value: str = RUN, prompts: str = "red, circle --d 3") -> Path:
    """A run folder as the trainer leaves it, on the tiny model, with a step save and a final save."""
    from lora_checks import export_file, lora_pipeline

    run_dir = data_dir / "runs" / value
    run_dir.mkdir(parents=True)
    save_config(TrainConfig(pretrained_model_name_or_path=str(model), resolution="64", output_name="tiny",
                            output_dir=str(run_dir), mixed_precision="no", sample_prompts=prompts),
                run_dir / "job.toml")
    events = EventWriter(run_dir)
    events.emit("start", run_id=run_dir.name, pid=1, total_steps=20, total_epochs=2)
    (run_dir / "sample").mkdir()
    sample = run_dir / "sample" / SAMPLE
    Image.new("RGB", (64, 64), "red").save(sample)
    events.emit("sample", step=10, paths=[str(sample)])
    for step, name, seed in ((10, STEP_SAVE, 1), (20, FINAL_SAVE, 2)):
        export_file(lora_pipeline("sd1", 4, 2.0, seed=seed), "sd1", run_dir / name)
        events.emit("checkpoint", step=step, epoch=step // 10, path=str(run_dir / name),
                    check="60 of 60 modules matched")
    events.emit("done", path=str(run_dir / FINAL_SAVE), step=20)
    events.close()
    return run_dir


@pytest.fixture(scope="module")
def results_app(tmp_path_factory, tiny_sd1):
    data_dir = tmp_path_factory.mktemp("results-data")
    run_dir = finished_run(data_dir, tiny_sd1)
    ui, demo = serve(data_dir, dry_run=True)
    try:
        yield ui, run_dir
    finally:
        stop_all(ui.supervisor)
        demo.close()


@pytest.fixture(scope="module")
def client(results_app):
    return Client(results_app[0].url, verbose=False)


def test_results_endpoints_are_public(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/results_runs", "/results_report", "/compare", "/copy_lora"} <= names


def test_runs_list_shows_the_saves_and_the_final_report(client, results_app):
    run, table, save, download, report, prompt, _folder = client.predict(api_name="/results_runs")
    assert run["value"] == RUN and [v for _, v in run["choices"]] == [RUN]
    assert run["choices"][0][0] == "tiny · 20240101-120000 · done · 2 saves"
    assert [row[:4] for row in table["data"]] == [[FINAL_SAVE, "final", 20, 2], [STEP_SAVE, "step 10", 10, 1]]
    assert table["data"][0][5] == "60 of 60 modules matched"
    assert save["value"] == FINAL_SAVE and save["choices"] == [[FINAL_SAVE, FINAL_SAVE], [STEP_SAVE, STEP_SAVE]]
    assert prompt == "red, circle"  # the run's first sample prompt, ready to compare
    assert Path(download).read_bytes() == (results_app[1] / FINAL_SAVE).read_bytes()
    for expected in ("Self-check: 60 of 60 modules matched ✓", "| Modules | 60 (UNet 48, text encoder 12) |",
                     "| Rank | 4 |", "| Alpha | 2 (scale alpha/rank = 0.5) |", "| Base model version | sd_v1"):
        assert expected in report, expected


def test_report_and_download_follow_the_picked_save(client, results_app):
    download, report = client.predict(RUN, STEP_SAVE, api_name="/results_report")
    assert Path(download).name == STEP_SAVE
    assert Path(download).read_bytes() == (results_app[1] / STEP_SAVE).read_bytes()
    assert f"**{STEP_SAVE}**" in report and "step 10 (step 10, 1 epoch done)" in report

    for run, save in ((RUN, "../../../ui-settings.json"), ("../../..", FINAL_SAVE), (RUN, "missing.safetensors")):
        download, report = client.predict(run, save, api_name="/results_report")
        assert download is None and report.startswith("**No report:**") and "Traceback" not in report


def test_refresh_lists_a_run_that_appeared_later_first(client, results_app, tiny_sd1):
    ui, _ = results_app
    finished_run(Path(ui.settings.data_dir), tiny_sd1, "newer/20250101-120000")
    run, table, *_ = client.predict(api_name="/results_runs")
    assert run["value"] == "newer/20250101-120000" and len(table["data"]) == 2
    assert [v for _, v in run["choices"]] == ["newer/20250101-120000", RUN]
    kept, *_ = client.predict(RUN, api_name="/results_runs")  # a picked run stays picked
    assert kept["value"] == RUN


def test_copy_to_a_webui_folder_is_remembered_and_never_overwrites_silently(client, results_app, tmp_path):
    ui, run_dir = results_app
    webui = tmp_path / "stable-diffusion-webui" / "models" / "Lora"
    missing = client.predict(RUN, FINAL_SAVE, str(webui), False, api_name="/copy_lora")
    assert missing.startswith("**Not copied:**") and "folder not found" in missing

    webui.mkdir(parents=True)
    done = client.predict(RUN, FINAL_SAVE, str(webui), False, api_name="/copy_lora")
    assert done.startswith("Copied to") and (webui / FINAL_SAVE).read_bytes() == (run_dir / FINAL_SAVE).read_bytes()
    preview = webui / "tiny.preview.png"  # the newest sample by that save, where WebUIs look for its card image
    assert preview.read_bytes() == (run_dir / "sample" / SAMPLE).read_bytes()
    assert "with the preview `tiny.preview.png`" in done
    settings = json.loads((Path(ui.settings.data_dir) / SETTINGS_FILE).read_text(encoding="utf-8"))
    assert settings["webui_lora_folder"] == str(webui)
    *_, folder = client.predict(RUN, "", "", api_name="/results_runs")
    assert folder == str(webui)  # an empty folder box is filled from ui-settings.json

    (webui / FINAL_SAVE).write_bytes(b"an older file")
    refused = client.predict(RUN, FINAL_SAVE, str(webui), False, api_name="/copy_lora")
    assert "already exists" in refused and (webui / FINAL_SAVE).read_bytes() == b"an older file"
    replaced = client.predict(RUN, FINAL_SAVE, str(webui), True, api_name="/copy_lora")
    assert replaced.startswith("Copied to") and (webui / FINAL_SAVE).stat().st_size > 1000


def test_compare_makes_a_grid_under_the_run(client, results_app):
    _, run_dir = results_app
    image, message = client.predict(RUN, FINAL_SAVE, "red, circle", 7, 2, "0, 1", api_name="/compare")
    assert message.startswith("Grid saved as"), message
    grids = list((run_dir / "compare").glob("tiny_seed7_*.png"))
    assert len(grids) == 1 and str(grids[0]) in message
    assert Image.open(image).size == Image.open(grids[0]).size == (2 * 64 + 3 * 8, 64 + 16 + 24)

    image, message = client.predict(RUN, FINAL_SAVE, "", 7, 2, "0, 1", api_name="/compare")
    assert image is None and message == "**Not generated:** the prompt is empty: give the prompt to render"


def test_compare_is_refused_while_a_training_run_is_active(client, results_app, monkeypatch):
    ui, _ = results_app
    monkeypatch.setenv("LORAFORGE_DRY_RUN_STEP_SECONDS", "0.2")
    started = client.predict(output_name="busy", max_train_steps=1000, api_name="/start_run")[0]
    assert started.startswith("**started**"), started
    try:
        image, message = client.predict(RUN, FINAL_SAVE, "red, circle", 7, 2, "0, 1", api_name="/compare")
        assert image is None and message.startswith("**Not generated:** a training run is active (busy/")
    finally:
        client.predict(api_name="/stop_run")
        wait_for(lambda: not ui.supervisor.poll().active, timeout=30)


def test_the_compare_prompt_follows_the_run_shown_until_the_user_types_one(results_app, tiny_sd1, page):
    """One run's sample prompt (the demo's, say) must not stay in the before/after prompt when another run is shown;
    a prompt the user typed stays whatever run is picked."""
    import re

    from playwright.sync_api import expect

    ui, _ = results_app
    other = "other/20240102-120000"
    if not (ui.settings.data_dir / "runs" / other).exists():
        finished_run(ui.settings.data_dir, tiny_sd1, other, prompts="blue, square --d 5")
    prompt = page.locator("#compare-prompt textarea")

    def show(name: str) -> None:
        page.locator("#results-run input").click()
        page.get_by_role("option", name=re.compile(f"^{name} · ")).first.click()

    open_app(page, ui.url)
    page.get_by_role("tab", name="Results").click()
    show("tiny")
    expect(prompt).to_have_value("red, circle")
    show("other")
    expect(prompt).to_have_value("blue, square")
    prompt.fill("my own prompt")
    show("tiny")
    expect(page.locator("#results-report")).to_contain_text("tiny.safetensors")
    expect(prompt).to_have_value("my own prompt")
