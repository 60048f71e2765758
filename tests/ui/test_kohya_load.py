"""Load TOML of a kohya file in a real browser: the form shows the file's values and sd-scripts' defaults for what
it leaves out, and the message under the button names what was ignored and which defaults were taken."""

from __future__ import annotations

import pytest
from test_model_tab_form import open_model_tab, open_section
from ui_helpers import NOISE_FILTERS, fill

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]

# Shaped like sd-scripts' --output_config: flat, only what differs from its defaults, a key it has and we ignore.
KOHYA_FILE = 'network_module = "networks.lora"\nnetwork_dim = 32\nxformers = true\noptimizer_type = "adamw8bit"\n'


def test_load_toml_of_a_kohya_file_fills_sd_scripts_defaults_and_says_so(page, app):
    from playwright.sync_api import expect

    app.settings.configs_dir.mkdir(parents=True, exist_ok=True)
    (app.settings.configs_dir / "from-kohya.toml").write_text(KOHYA_FILE, encoding="utf-8")
    (app.settings.configs_dir / "plain.toml").write_text("network_dim = 8\n", encoding="utf-8")
    open_model_tab(page, app.url)
    open_section(page, "dataset")
    open_section(page, "network")
    expect(page.locator("#cfg-enable_bucket input")).to_be_checked()  # our default before loading

    fill(page, "#config-path textarea", "from-kohya.toml")
    page.locator("#load-toml").click()
    message = page.locator("#config-message")
    expect(message).to_contain_text("read as a kohya file")
    expect(message).to_contain_text("'xformers' ignored: attention always uses PyTorch SDPA")
    expect(message).to_contain_text("sd-scripts' defaults taken for the keys it leaves out")
    expect(message).to_contain_text("enable_bucket = false")
    expect(message).to_contain_text("learning_rate = 2e-06")
    expect(page.locator("#cfg-network_dim input")).to_have_value("32")  # the file's own value
    expect(page.locator("#cfg-network_alpha input")).to_have_value("1")  # sd-scripts' default alpha
    expect(page.locator("#cfg-enable_bucket input")).not_to_be_checked()
    open_section(page, "optimizer")
    expect(page.locator("#cfg-optimizer_type input")).to_have_value("AdamW8bit")  # read case-insensitively

    # A file of our own names only is ours, unless the user says it is a kohya file.
    fill(page, "#config-path textarea", "plain.toml")
    page.locator("#load-toml").click()
    expect(message).to_contain_text("Loaded")
    expect(message).not_to_contain_text("defaults taken")
    expect(page.locator("#cfg-network_alpha input")).to_have_value("8")
    page.locator("#kohya-file input").check()
    page.locator("#load-toml").click()
    expect(message).to_contain_text("sd-scripts' defaults taken")
    expect(message).to_contain_text("--kohya --config")
    expect(page.locator("#cfg-network_alpha input")).to_have_value("1")
