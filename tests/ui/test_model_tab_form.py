"""The settings form in a real browser: unset numbers stay unset, each field's check shows beside it and refuses
Start, an unreadable base model is refused, the form comes back after a reload and a restart, the layout is short
and labelled for people, and a CPU-only machine says what its run uses instead of bf16.

Each test serves its own app on its own data folder: the form is saved there on every edit, so a shared app would
carry one test's values into the next.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from ui_helpers import ARTIFACTS, NOISE_FILTERS, fill, open_app, run_of, serve, stop_all, wait_for

MODEL = "#cfg-pretrained_model_name_or_path input"
pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]


def open_model_tab(page, url: str) -> None:
    open_app(page, url)
    page.get_by_role("tab", name="Model & preset").click()
    page.locator(MODEL).wait_for()


def open_section(page, section: str, advanced: bool = False) -> None:
    page.locator(f"#section-{section} > button").click()
    if advanced:
        page.locator(f"#advanced-{section} > button").click()


def press_start(page) -> str:
    """Start on the Train tab, as a user presses it; the message it shows."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Train").click()
    message = page.locator("#start-message")
    page.locator("#start-btn").click()
    expect(message).to_contain_text("started", ignore_case=True)
    return message.inner_text()


def test_opening_sections_leaves_unset_numbers_unset_and_start_works(page, app):
    """Opening Optimizer and Training once turned unet_lr, max_train_epochs and min_snr_gamma into 0, and Start
    refused 'unet_lr = 0 is invalid'."""
    from playwright.sync_api import expect

    open_model_tab(page, app.url)
    open_section(page, "optimizer")
    open_section(page, "training")
    for name in ("unet_lr", "max_train_epochs", "min_snr_gamma"):
        field = page.locator(f"#cfg-{name} input")
        expect(field).to_have_value("")
        expect(field).to_have_attribute("placeholder", "unset (auto)")
    text = press_start(page)
    assert "Not started" not in text, text
    assert wait_for(app.supervisor.discover)  # the run was made


def test_number_checks_show_at_the_field_and_refuse_start(page, app):
    from gradio_client import Client
    from playwright.sync_api import expect

    open_model_tab(page, app.url)
    open_section(page, "optimizer")
    rate = page.locator("#cfg-learning_rate input")
    expect(rate).to_have_value("0.0001")
    rate.press("ArrowUp")  # a learning-rate step, not 1
    assert float(rate.input_value()) == pytest.approx(0.00011)

    fill(page, "#cfg-unet_lr input", "abc")
    expect(page.locator("#err-unet_lr")).to_contain_text("unet_lr: 'abc' is not a number; give a number > 0 and ≤ 10")
    fill(page, "#cfg-learning_rate input", "-1")
    expect(page.locator("#err-learning_rate")).to_contain_text("learning_rate must be > 0 and ≤ 10; you gave -1")

    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#start-btn")).to_be_disabled()  # the messages are at the fields; Start waits for a fix
    assert app.supervisor.discover() == []

    page.get_by_role("tab", name="Model & preset").click()  # fixed: the messages go
    fill(page, "#cfg-learning_rate input", "0.0002")
    fill(page, "#cfg-unet_lr input", "")
    expect(page.locator("#err-learning_rate")).to_be_hidden()
    expect(page.locator("#err-unet_lr")).to_be_hidden()

    client = Client(app.url, verbose=False)  # the API's Start words it the same way
    text = client.predict(learning_rate="abc", api_name="/start_run")[0]
    assert text == "**Not started:** learning_rate: 'abc' is not a number; give a number > 0 and ≤ 10"
    text = client.predict(max_train_epochs="0", api_name="/start_run")[0]
    assert text == "**Not started:** max_train_epochs must be ≥ 1; you gave 0"


def test_an_unreadable_base_model_is_refused_at_the_field_and_on_start(page, app, tmp_path):
    from gradio_client import Client
    from playwright.sync_api import expect

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x01 not a model")
    open_model_tab(page, app.url)
    fill(page, MODEL, str(broken))
    expect(page.locator("#err-pretrained_model_name_or_path")).to_contain_text("broken.safetensors")
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#start-btn")).to_be_disabled()

    client = Client(app.url, verbose=False)  # the API's Start makes the same check
    text = client.predict(pretrained_model_name_or_path=str(broken), api_name="/start_run")[0]
    assert text.startswith("**Not started:**") and "broken.safetensors" in text and "\n" not in text
    assert app.supervisor.discover() == []


def test_the_form_and_its_preset_come_back_after_a_reload_and_a_restart(page, app, tmp_path):
    from playwright.sync_api import expect

    model = str(tmp_path / "my-model.safetensors")
    open_model_tab(page, app.url)
    page.locator("#preset input").click()
    page.get_by_role("option", name="SD1.5 anime").click()
    expect(page.locator("#cfg-clip_skip input")).to_have_value("2")
    fill(page, MODEL, model)
    open_section(page, "network")
    fill(page, "#cfg-network_dim input", "48")

    page.reload()
    page.get_by_role("tab", name="Model & preset").click()
    expect(page.locator(MODEL)).to_have_value(model)
    expect(page.locator("#preset input")).to_have_value("SD1.5 anime")
    expect(page.locator("#preset-info")).to_contain_text("SD1.5 anime")
    open_section(page, "network")
    expect(page.locator("#cfg-network_dim input")).to_have_value("48")

    # A restart: a new app on the same data folder.
    data_dir = app.settings.data_dir
    ui, demo = serve(data_dir, dry_run=True)
    try:
        open_model_tab(page, ui.url)
        expect(page.locator(MODEL)).to_have_value(model)
        expect(page.locator("#preset input")).to_have_value("SD1.5 anime")
        expect(page.locator("#cfg-clip_skip input")).to_have_value("2")
    finally:
        stop_all(ui.supervisor)
        demo.close()


def test_save_toml_writes_the_forms_output_dir_not_a_loaded_runs_folder(page, app):
    """A run's job.toml names the run folder the UI chose; loading it and saving again must not send a terminal
    run into that old folder."""
    from gradio_client import Client
    from playwright.sync_api import expect

    client = Client(app.url, verbose=False)
    run_dir = run_of(client.predict(output_name="old", max_train_steps=5, api_name="/start_run")[0])
    job = run_dir / "job.toml"
    wait_for(job.is_file)
    open_model_tab(page, app.url)
    fill(page, "#config-path textarea", str(job))
    page.locator("#load-toml").click()
    expect(page.locator("#config-message")).to_contain_text("Loaded")
    fill(page, "#config-path textarea", "again.toml")
    page.locator("#save-toml").click()
    expect(page.locator("#config-message")).to_contain_text("Saved")
    saved = tomllib.loads((app.settings.configs_dir / "again.toml").read_text(encoding="utf-8"))
    assert saved["save"]["output_name"] == "old"  # the loaded settings are saved again
    assert Path(saved["save"].get("output_dir", "")) != run_dir


def page_height(page) -> int:
    return page.evaluate("document.documentElement.scrollHeight")


def test_the_form_is_short_labelled_for_people_and_its_help_is_readable(page, app):
    from playwright.sync_api import expect

    open_model_tab(page, app.url)
    page.wait_for_timeout(500)  # measured after the tab's layout settles; not a timing assertion
    folded = page_height(page)
    for section in ("dataset", "network", "optimizer", "training", "sample", "save"):
        open_section(page, section, advanced=True)
    page.locator("#advanced-model > button").click()
    page.locator("#cfg-logging_dir input").wait_for()
    page.wait_for_timeout(500)
    opened = page_height(page)
    print(f"Model tab height: {folded} px folded, {opened} px with every section open")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "model-tab-open.png"), full_page=True)
    assert folded < 2000 and opened < 5000, (folded, opened)
    # kohya's finer options fold once more by topic, each field with its reason.
    page.locator("#topic-loss-and-noise > button").click()
    expect(page.locator("#cfg-loss_type")).to_contain_text("weigh outliers less")
    expect(page.locator("#cfg-huber_c [data-testid='block-info']").first).to_be_visible()

    rate = page.locator("#cfg-learning_rate")
    expect(rate.locator('[data-testid="block-info"]')).to_have_text("Learning rate")
    key = rate.locator('[data-testid="block-info"]').evaluate("e => getComputedStyle(e, '::after').content")
    assert key == '"learning_rate"'
    assert page.locator("#section-model #cfg-output_name").count() == 1  # the LoRA's name sits with the model
    assert page.locator("#section-dataset #cfg-train_data_dir").count() == 0  # the Dataset tab shows it
    # Help text in the body text's colour, not Gradio's pale grey.
    info = rate.locator(".info-text").evaluate("e => getComputedStyle(e).color")
    body = page.locator("#preset-info").evaluate("e => getComputedStyle(e).color")
    assert info == body, (info, body)


def test_a_cpu_only_machine_says_what_replaces_bf16_and_the_8bit_optimizer(page, app):
    """This machine has no CUDA GPU: the trainer trains in float32 instead of bf16 (training/run/prepare.py) and
    runs AdamW8bit through the installed bitsandbytes on the CPU (training/run/optim.py)."""
    from playwright.sync_api import expect

    from app.device import shared_probe

    assert shared_probe().wait(300), "the device check did not answer"
    if not shared_probe().line.startswith("No CUDA GPU"):
        pytest.skip("this machine has a CUDA GPU")
    open_model_tab(page, app.url)
    page.locator("#preset input").click()
    page.get_by_role("option", name="SDXL photoreal").click()
    note = page.locator("#device-note")
    expect(note).to_contain_text("No CUDA GPU here")
    expect(note).to_contain_text("mixed_precision bf16 needs a CUDA GPU, so the trainer trains in float32 instead")
    expect(note).to_contain_text("AdamW8bit")
    open_section(page, "optimizer")
    page.locator("#cfg-optimizer_type input").click()
    page.get_by_role("option", name="AdamW", exact=True).click()
    expect(note).not_to_contain_text("AdamW8bit")


def test_form_errors_follow_the_fields_as_they_are_typed(page, tmp_path):
    """AppContext.form_errors holds every invalid field while there is one and is empty once the form may start;
    the Train tab's Start button is off while it holds any. The page under test shows the State in a JSON box."""
    import gradio as gr
    from playwright.sync_api import expect

    from app.main import build_app, launch_options
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", open_browser=False, dry_run=True)
    demo = build_app(settings)
    empty_states = [b for b in demo.blocks.values() if isinstance(b, gr.State) and b.value == {}]
    assert len(empty_states) == 1  # AppContext.form_errors: the page's only State that starts as {}
    errors = empty_states[0]
    with demo:
        shown = gr.JSON(elem_id="form-errors-view")
        errors.change(lambda value: value or {"none": True}, errors, shown)
    demo.queue()
    _, url, _ = demo.launch(**launch_options(settings) | {"server_port": None, "prevent_thread_lock": True,
                                                           "quiet": True})
    try:
        open_model_tab(page, url)
        open_section(page, "optimizer")
        view = page.locator("#form-errors-view")
        fill(page, "#cfg-unet_lr input", "abc")
        expect(view).to_contain_text("unet_lr: 'abc' is not a number")
        fill(page, "#cfg-learning_rate input", "-1")
        expect(view).to_contain_text("learning_rate must be > 0")
        expect(view).to_contain_text("unet_lr")
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#start-btn")).to_be_disabled()  # Start follows form_errors
        page.get_by_role("tab", name="Model & preset").click()
        fill(page, "#cfg-unet_lr input", "")
        fill(page, "#cfg-learning_rate input", "0.0001")
        expect(view).to_contain_text("none")
        expect(view).not_to_contain_text("learning_rate")
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#start-btn")).to_be_enabled()
    finally:
        demo.close()
