"""The Model tab in a real browser with an SDXL base model: the family shows, the preset list follows the family,
and switching to a model of another family says that the preset in force no longer fits.

Drives Debian's Chromium (no Playwright browser download); skipped where it is not installed.
The model files are header-only .safetensors: detection reads nothing else.
"""

from __future__ import annotations

import re

import pytest
from ui_helpers import ARTIFACTS, ATTN2_K, NOISE_FILTERS, fill, open_app, write_header_only_safetensors

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]

MODEL_INPUT = "#cfg-pretrained_model_name_or_path input"


def type_model(page, path: str) -> None:
    """Type a model path the way a user does."""
    fill(page, MODEL_INPUT, path)


def offered_presets(page):
    """Open the preset dropdown; its options, for the caller's auto-waiting expect."""
    page.locator("#preset input").click()
    return page.get_by_role("option")


def names(*labels: str) -> list[re.Pattern]:
    """Option texts exactly these labels (Gradio puts a check-mark cell before each)."""
    return [re.compile(rf"^\W*{re.escape(label)}$") for label in labels]


def test_sdxl_model_filters_presets_and_a_family_switch_shows_the_mismatch(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    xl = write_header_only_safetensors(tmp_path / "illustrious-xl.safetensors", {
        "conditioner.embedders.1.model.ln_final.weight": (1280,), ATTN2_K: (640, 2048)})
    sd15 = write_header_only_safetensors(tmp_path / "sd15.safetensors", {ATTN2_K: (320, 768)})

    open_app(page, dry_app.url)
    page.get_by_role("tab", name="Model & preset").click()

    # An SDXL model: the family shows and only SDXL presets are offered.
    type_model(page, str(xl))
    expect(page.locator("#model-family")).to_contain_text("Detected SDXL base model")
    expect(offered_presets(page)).to_have_text(names("SDXL anime", "SDXL photoreal"))
    page.get_by_role("option", name="SDXL anime").click()
    page.locator("#section-dataset > button").click()  # folded: most people never change it
    expect(page.locator("#cfg-resolution input")).to_have_value("1024")
    expect(page.locator("#preset-info")).to_contain_text("SDXL anime (SDXL)")
    expect(page.locator("#cfg-clip_skip")).to_contain_text("penultimate layer of both text encoders")
    page.locator("#section-network").get_by_text("Network", exact=True).first.click()
    expect(page.locator("#cfg-network_train_unet_only input")).to_be_checked()
    expect(page.locator("#cfg-network_dim input")).to_have_value("16")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "model-tab-sdxl.png"), full_page=True)

    # Another family: the SDXL preset is no longer offered nor silently kept; the page says it does not fit.
    type_model(page, str(sd15))
    expect(page.locator("#model-family")).to_contain_text("Detected SD1.x base model")
    expect(page.locator("#model-family")).to_contain_text("Does not fit the preset: the preset 'SDXL anime' is for "
                                                          "SDXL models")
    expect(page.locator("#preset-info")).to_contain_text("Does not fit the base model")
    expect(page.locator("#preset input")).to_have_value("")
    expect(offered_presets(page)).to_have_text(names("SD1.5 anime", "SD1.5 photoreal"))
    page.get_by_role("option", name="SD1.5 anime").click()  # a fitting preset clears the message
    expect(page.locator("#cfg-resolution input")).to_have_value("512")
    expect(page.locator("#preset-info")).not_to_contain_text("Does not fit")
    expect(page.locator("#model-family")).not_to_contain_text("Does not fit")
    page.screenshot(path=str(ARTIFACTS / "model-tab-sd15-after-sdxl.png"), full_page=True)
