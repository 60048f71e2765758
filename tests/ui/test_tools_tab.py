"""The Tools tab in a real browser on an app started with --loras-dir: a LoRA picked from the list is resized to rank
2 (the report, the download, the file under <data>/tools read back here), inspect shows the block table, a typed
path outside the folders is refused in one line, and Stop ends a long job with nothing written. Skipped without
Debian's Chromium."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timing import ms
from tool_files import random_lora, save_lora_file
from ui_helpers import NOISE_FILTERS, UiApp, open_app, stop_all

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]



@pytest.fixture(scope="module")
def tools_app(tmp_path_factory, tiny_ckpt) -> Iterator[UiApp]:
    """The app with a --loras-dir holding one tiny SD1.5 LoRA of rank 4 (``style.safetensors``)."""
    from app.main import build_app, launch_options
    from app.settings import Settings
    from app.supervisor import JobSupervisor

    root = tmp_path_factory.mktemp("tools-ui")
    loras = root / "my-loras"
    loras.mkdir()
    tensors = random_lora(tiny_ckpt("sd1").modules(), rank=4, alpha=4.0, seed=7)
    save_lora_file(loras / "style.safetensors", tensors, "sd1")
    settings = Settings(data_dir=root / "data", open_browser=False, dry_run=True, loras_dirs=[loras])
    supervisor = JobSupervisor(settings.data_dir, dry_run=True)
    previous = os.environ.get("GRADIO_TEMP_DIR")
    demo = build_app(settings, supervisor)  # points GRADIO_TEMP_DIR at this app's folder: the download is served
    demo.queue(default_concurrency_limit=1)
    url = launched(demo, launch_options(settings) | {"server_port": None, "prevent_thread_lock": True, "quiet": True})
    try:
        yield UiApp(url, settings, supervisor)
    finally:
        stop_all(supervisor)
        demo.close()
        if previous is not None:
            os.environ["GRADIO_TEMP_DIR"] = previous


def launched(demo, options: dict) -> str:
    """demo.launch, tried again when Gradio's own 3-second check of the page times out on a loaded machine."""
    for attempt in range(3):
        try:
            return demo.launch(**options)[1]
        except ValueError as err:  # "When localhost is not accessible, ...": the page answered too slowly
            demo.close()
            if attempt == 2 or "localhost is not accessible" not in str(err):
                raise
    raise AssertionError("unreachable")


def open_tools(page, app: UiApp, operation: str = "Resize") -> None:
    open_app(page, app.url)
    page.get_by_role("tab", name="Tools").click()
    page.locator("#tools-operation").get_by_text(operation, exact=True).click()


def pick_lora(page, label: str) -> None:
    page.locator("#tools-lora-0 input").click()
    page.get_by_role("option", name=label, exact=True).click()


def test_a_picked_lora_resized_to_rank_2_shows_the_report_and_the_download(page, tools_app):
    from playwright.sync_api import expect

    open_tools(page, tools_app)
    pick_lora(page, "my-loras/style.safetensors")
    page.locator("#tools-rank input").fill("2")
    page.locator("#tools-output-name input").fill("style-r2")
    page.locator("#tools-run").click()
    out = tools_app.settings.data_dir / "tools" / "style-r2" / "style-r2.safetensors"
    expect(page.locator("#tools-progress")).to_contain_text(f"Done: wrote {out}", timeout=ms(60))
    expect(page.locator("#tools-report textarea")).to_have_value(re.compile(r"overall: [\d.]+% of the LoRA"))
    expect(page.locator("#tools-report textarea")).to_have_value(re.compile(r"rank +4 -> +2 +Frobenius norm kept"))
    expect(page.locator("#tools-result")).to_contain_text(str(out))
    expect(page.locator("#tools-download")).to_contain_text(re.compile(r"style-r2\s*\.safetensors"))
    download = page.locator('#tools-download a[href$="/style-r2.safetensors"]').first
    expect(download).to_be_visible()
    tensors = load_file(str(out))
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight")}
    assert ranks == {2}
    with page.expect_download() as got:
        download.click()
    assert Path(got.value.path()).read_bytes() == out.read_bytes()
    # The new LoRA is offered in the list next time (after the runs', before the user's folders).
    page.locator("#tools-lora-0 input").click()
    expect(page.get_by_role("option", name="data/tools/style-r2/style-r2.safetensors", exact=True)).to_be_visible()


def test_inspect_shows_the_block_table(page, tools_app):
    from playwright.sync_api import expect

    open_tools(page, tools_app, "Inspect")
    expect(page.locator("#tools-rank")).to_be_hidden()
    expect(page.locator("#tools-output-name")).to_be_hidden()
    pick_lora(page, "my-loras/style.safetensors")
    page.locator("#tools-run").click()
    expect(page.locator("#tools-progress")).to_contain_text("Done: inspect", timeout=ms(60))
    report = page.locator("#tools-report textarea")
    expect(report).to_have_value(re.compile(r"family: +SD1\.x"))
    expect(report).to_have_value(re.compile(r"delta norm per block"))
    expect(report).to_have_value(re.compile(r"\n +unet \w+ +[\d.e+-]+ +#+"))
    expect(report).to_have_value(re.compile(r"\n +lora_te layer 0 +[\d.e+-]+ +#*"))


def test_a_typed_path_outside_the_folders_is_refused_in_one_line(page, tools_app, tmp_path):
    from playwright.sync_api import expect

    stray = tmp_path / "stray.safetensors"
    stray.write_bytes((tools_app.settings.loras_dirs[0] / "style.safetensors").read_bytes())
    open_tools(page, tools_app)
    field = page.locator("#tools-lora-0 input")
    field.fill(str(stray))
    field.press("Enter")
    page.locator("#tools-rank input").fill("2")
    page.locator("#tools-run").click()
    line = page.locator("#tools-progress")
    expect(line).to_contain_text("outside the folders the Tools tab may read", timeout=ms(30))
    text = line.inner_text().strip()
    assert len(text.splitlines()) == 1 and text.startswith("Not started:"), text
    assert str(tools_app.settings.data_dir) in text and f"{tools_app.settings.loras_dirs[0]} (--loras-dir)" in text
    assert not (tools_app.settings.data_dir / "tools").exists() or not list(
        (tools_app.settings.data_dir / "tools").rglob("stray*"))


def test_stop_ends_a_long_resize_and_writes_nothing(page, tools_app):
    from playwright.sync_api import expect

    modules = {f"lora_unet_block_{i}_proj": torch.nn.Linear(192, 192, bias=False) for i in range(6000)}
    big = tools_app.settings.loras_dirs[0] / "big.safetensors"
    save_lora_file(big, random_lora(modules, rank=24, alpha=24.0, seed=5))
    open_tools(page, tools_app)
    pick_lora(page, "my-loras/big.safetensors")
    page.locator("#tools-rank input").fill("4")
    page.locator("#tools-output-name input").fill("big-r4")
    page.locator("#tools-run").click()
    progress = page.locator("#tools-progress")
    expect(progress).to_contain_text(re.compile(r"resize: [1-9]\d* of 6000 modules"), timeout=ms(60))
    expect(progress.locator("progress")).to_have_attribute("max", "6000")
    page.locator("#tools-stop").click()
    expect(progress).to_contain_text("Stopped: resize wrote nothing under the output name.", timeout=ms(60))
    folder = tools_app.settings.data_dir / "tools" / "big-r4"
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "tool.log"]
