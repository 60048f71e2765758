"""The page in a real browser: pick a preset, start a dry run, watch it finish with a chart and samples.

Drives Debian's Chromium (no Playwright browser download); skipped where it is not installed.
Screenshots of every tab land in test-artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import re

import pytest
from PIL import Image
from timing import ms
from ui_helpers import ARTIFACTS, NOISE_FILTERS, fill, open_app, run_of, wait_for

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]



def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def open_section(page, section: str) -> None:
    """Unfold a section of the Model & preset tab's form."""
    page.locator(f"#section-{section}").get_by_text(section.capitalize(), exact=True).first.click()


def test_preset_dry_run_end_to_end(page, dry_app):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    open_app(page, dry_app.url)
    expect(page.get_by_role("tab", name="Train")).to_be_visible()

    open_tab(page, "Model & preset")
    page.locator("#preset input").click()
    page.get_by_role("option", name="SD1.5 anime").click()
    expect(page.locator("#cfg-clip_skip input")).to_have_value("2")
    expect(page.locator("#preset-info")).to_contain_text("booru")
    expect(page.locator("#cfg-clip_skip")).to_contain_text("SD1.5 anime: anime SD1.5 bases were trained on CLIP")

    # Samples need prompts and a schedule; the anime preset leaves both to the user.
    page.locator("#section-sample").get_by_text("Sample", exact=True).first.click()
    fill(page, "#cfg-sample_prompts input", "1girl, solo")
    fill(page, "#cfg-sample_every_n_epochs input", "5")
    page.screenshot(path=str(ARTIFACTS / "tab-model.png"), full_page=True)

    fill(page, "#cfg-output_name input", "anime-e2e")
    open_tab(page, "Train")
    page.locator("#start-btn").click()
    expect(page.locator("#start-message")).to_contain_text("started")
    page.locator("#queue-btn").click()  # one GPU run at a time: a second one waits its turn, visibly
    expect(page.locator("#start-message")).to_contain_text("queued (position 1)")
    expect(page.locator(".queue-row").filter(has_text="queued (position 1)")).to_be_visible()
    page.locator("#run-picker input").click()
    page.get_by_role("option", name=re.compile(r"^anime-e2e · .*")).last.click()  # the older of the two
    expect(page.locator("#run-status")).to_contain_text("done", timeout=ms(90))
    expect(page.locator("#run-progress")).to_contain_text("step 100/100")
    expect(page.locator("#loss-chart")).to_be_visible()
    expect(page.locator("#loss-chart img, #loss-chart svg").first).to_be_visible()
    expect(page.locator("#samples img").first).to_be_visible()
    expect(page.locator("#log-tail textarea")).to_have_value(re.compile("dry run done"))
    page.screenshot(path=str(ARTIFACTS / "tab-train.png"), full_page=True)

    open_tab(page, "Results")
    page.locator("#results-refresh").click()
    page.locator("#results-run input").click()
    page.get_by_role("option", name=re.compile("anime-e2e")).first.click()
    expect(page.locator("#results-report")).to_contain_text("dry run")  # a dry run's files are placeholders


def test_reload_reattaches_to_the_finished_run(page, dry_app, client):
    """A run finished while no page was open (started through the API here): a fresh page shows it."""
    from playwright.sync_api import expect

    from app.runs import replay

    wait_for(lambda: not dry_app.supervisor.poll().active)
    run_dir = run_of(client.predict(output_name="reattach", max_train_steps=10, sample_prompts="a cat",
                                    sample_every_n_steps=5, api_name="/start_run")[0])
    wait_for(lambda: replay(run_dir).terminal == "done")
    open_app(page, dry_app.url)
    open_tab(page, "Train")
    expect(page.locator("#run-status")).to_contain_text("done")
    expect(page.locator("#run-status")).to_contain_text("reattach")
    expect(page.locator("#samples img").first).to_be_visible()


# --- A new user's first session, for real: the tiny demo model trains in child processes, nothing is replayed.


def chart_image(page) -> str:
    """What the loss chart shows right now (the plot's image source changes whenever it is redrawn)."""
    return page.locator("#loss-chart img").first.get_attribute("src")


def step_shown(page) -> int:
    found = re.search(r"step (\d+)/", page.locator("#run-progress").inner_text())
    return int(found[1]) if found else 0


@pytest.mark.slow
def test_new_user_journey(page, trained_demo, tmp_path):
    """A new user's first session after trying the demo: the page shows the demo run, its settings load from
    demo.toml, a caption of its dataset is edited, the anime preset trains, stops and resumes to the end, then the
    LoRA downloads from Results and passes the engine's own self-check. The demo itself trained once for the whole
    session (``trained_demo``, through the same /try_demo endpoint as the button)."""
    from playwright.sync_api import expect

    real_app = trained_demo.app
    ARTIFACTS.mkdir(exist_ok=True)
    open_app(page, real_app.url)
    expect(page.locator("#device-report")).to_contain_text(re.compile("CPU|GPU"))

    # 1. The finished demo run is what the Train tab shows; its settings come back from demo.toml.
    open_tab(page, "Train")
    expect(page.locator("#run-status")).to_contain_text("done")
    expect(page.locator("#samples img").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "journey-1-demo-done.png"), full_page=True)
    open_tab(page, "Model & preset")
    fill(page, "#config-path input, #config-path textarea", str(real_app.settings.demo_dir / "demo.toml"))
    page.locator("#load-toml").click()
    expect(page.locator("#config-message")).to_contain_text("Loaded")

    # 2. The Dataset tab follows the form: the demo's dataset is loaded; fix one caption.
    demo_data = real_app.settings.demo_dir / "dataset"
    open_tab(page, "Dataset")
    expect(page.locator("#cfg-train_data_dir textarea, #cfg-train_data_dir input").first).to_have_value(str(demo_data))
    page.locator("#dataset-gallery img").first.click()
    caption = page.locator("#caption-text textarea")
    expect(caption).to_have_value(re.compile("^lfbot"))
    image_name = page.locator("#caption-file input").input_value()
    caption.fill("lfbot, robot, red scarf")
    page.locator("#caption-save").click()
    expect(page.locator("#caption-message")).to_contain_text("Saved")
    assert (demo_data / image_name).with_suffix(".txt").read_text(encoding="utf-8") == "lfbot, robot, red scarf"
    page.locator("#dataset-check-btn").click()
    expect(page.locator("#dataset-report")).to_contain_text("steps per epoch")
    page.screenshot(path=str(ARTIFACTS / "journey-2-dataset.png"), full_page=True)

    # 3. The anime preset keeps the demo's model and dataset; shrink it to a CPU-sized run.
    open_tab(page, "Model & preset")
    page.locator("#preset input").click()
    page.get_by_role("option", name="SD1.5 anime").click()
    expect(page.locator("#cfg-clip_skip input")).to_have_value("2")
    expect(page.locator("#model-family")).to_contain_text("SD1.x")
    open_section(page, "dataset")
    fill(page, "#cfg-resolution input", "128")
    page.locator("#advanced-dataset > button").click()
    page.locator("#topic-buckets > button").click()
    fill(page, "#cfg-min_bucket_reso input", "64")
    page.locator("#section-training").get_by_text("Training", exact=True).first.click()
    fill(page, "#cfg-max_train_epochs input", "")
    fill(page, "#cfg-max_train_steps input", "40")
    page.locator("#section-sample").get_by_text("Sample", exact=True).first.click()
    fill(page, "#cfg-sample_every_n_steps input", "8")
    page.screenshot(path=str(ARTIFACTS / "tab-model.png"), full_page=True)

    # 4. Train: the chart grows and samples appear; Stop saves; Resume finishes from the saved state.
    fill(page, "#cfg-output_name input", "journey")
    open_tab(page, "Train")
    page.locator("#start-btn").click()
    expect(page.locator("#start-message")).to_contain_text("started")
    expect(page.locator("#run-progress")).to_contain_text(re.compile(r"step ([3-9]|\d\d)/40"), timeout=ms(120))
    first_chart = chart_image(page)
    expect(page.locator("#samples img").first).to_be_visible(timeout=ms(120))
    expect(page.locator("#run-progress")).not_to_contain_text(f"step {step_shown(page)}/40", timeout=ms(60))
    assert chart_image(page) != first_chart, "the loss chart did not change while training"
    page.locator("#stop-btn").click()
    expect(page.locator("#run-status")).to_contain_text("stopped", timeout=ms(120))
    stopped_at = step_shown(page)
    assert 0 < stopped_at < 40
    page.locator("#resume-btn").click()
    expect(page.locator("#start-message")).to_contain_text("started")
    expect(page.locator("#run-status")).to_contain_text("done", timeout=ms(180))
    expect(page.locator("#run-progress")).to_contain_text("step 40/40")
    page.screenshot(path=str(ARTIFACTS / "tab-train.png"), full_page=True)

    # 5. Results: the resumed run's final LoRA downloads and passes the engine's self-check.
    open_tab(page, "Results")
    page.locator("#results-refresh").click()
    page.locator("#results-run input").click()
    page.get_by_role("option", name=re.compile(r"journey · .* · done")).first.click()
    expect(page.locator("#results-report")).to_contain_text("modules matched")
    fill(page, "#compare-steps input", "4")
    page.locator("#compare-btn").click()
    expect(page.locator("#compare-grid img").first).to_be_visible(timeout=ms(120))
    with page.expect_download() as download:
        page.locator("#results-download a").first.click()
    lora = tmp_path / download.value.suggested_filename
    download.value.save_as(lora)
    page.screenshot(path=str(ARTIFACTS / "tab-results.png"), full_page=True)

    from training.lora_files.self_check import verify_lora
    from training.models.loading import load_base_model

    base = load_base_model(str(real_app.settings.demo_dir / "model"))
    report = verify_lora(lora, base.family, base.unet, [base.text_encoder])
    assert report.ok and report.matched == report.expected > 0, report.problems


def test_bad_input_says_what_to_fix(page, real_app, tmp_path):
    """Mistakes a new user makes show as one specific line on the page, before any run starts."""
    from playwright.sync_api import expect
    from ui_helpers import ATTN2_K, write_header_only_safetensors

    open_app(page, real_app.url)
    open_tab(page, "Dataset")
    fill(page, "#cfg-train_data_dir input", str(tmp_path / "no-such-folder"))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-message")).to_contain_text("folder not found")

    sd15 = write_header_only_safetensors(tmp_path / "sd15.safetensors", {ATTN2_K: (320, 768)})
    xl = write_header_only_safetensors(tmp_path / "xl.safetensors", {"conditioner.embedders.1.x": (4,)})
    empty = tmp_path / "empty"
    empty.mkdir()
    fill(page, "#cfg-train_data_dir input", str(empty))  # the dataset folder box, on the Dataset tab
    open_tab(page, "Model & preset")
    fill(page, "#cfg-pretrained_model_name_or_path input", str(xl))
    expect(page.locator("#model-family")).to_contain_text("SDXL")
    open_tab(page, "Train")
    runs_before = len(real_app.supervisor.discover())
    page.locator("#start-btn").click()
    expect(page.locator("#start-message")).to_contain_text("no training images found in")

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(images / "red.png")
    open_tab(page, "Dataset")
    fill(page, "#cfg-train_data_dir input", str(images))
    open_tab(page, "Model & preset")
    fill(page, "#cfg-pretrained_model_name_or_path input", "")  # no model yet: every preset is offered
    page.locator("#preset input").click()
    page.get_by_role("option", name="SD2.1-768 photoreal").click()
    fill(page, "#cfg-pretrained_model_name_or_path input", str(sd15))  # then a model of another family
    expect(page.locator("#preset-info")).to_contain_text("Does not fit the base model")
    expect(page.locator("#model-family")).to_contain_text("Does not fit the preset")
    open_tab(page, "Train")
    page.locator("#start-btn").click()
    expect(page.locator("#start-message")).to_contain_text("is for SD2.x models but")
    page.screenshot(path=str(ARTIFACTS / "bad-input.png"), full_page=True)
    assert len(real_app.supervisor.discover()) == runs_before  # nothing was started or queued
