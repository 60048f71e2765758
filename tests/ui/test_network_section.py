"""The Model tab's Network section in a real browser: a network type picked writes kohya's fields (Save TOML shows
them), a loaded kohya TOML shows its type, a bad network_args shows its error and keeps Start off.

Each test serves its own app on its own data folder (the form is saved there on every edit).
"""

from __future__ import annotations

import tomllib

import pytest
from test_model_tab_form import open_model_tab, open_section
from ui_helpers import NOISE_FILTERS, fill, serve, stop_all

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]


def pick_type(page, kind: str) -> None:
    page.locator("#network-type").get_by_text(kind, exact=True).click()


def saved_network(page, app, name: str) -> dict:
    """Save TOML as the user does; the [network] table of the file written."""
    from playwright.sync_api import expect

    fill(page, "#config-path textarea", name)
    page.locator("#save-toml").click()
    expect(page.locator("#config-message")).to_contain_text(f"{name}. The same run")
    return tomllib.loads((app.settings.configs_dir / name).read_text(encoding="utf-8"))["network"]


def test_choosing_locon_shows_its_reason_and_conv_rank_and_saves_conv_dim(page, app):
    from playwright.sync_api import expect

    open_model_tab(page, app.url)
    open_section(page, "network")
    expect(page.locator("#network-type input[value='LoRA']")).to_be_checked()  # today's default
    expect(page.locator("#cfg-conv_dim")).to_be_hidden()  # plain LoRA has no conv adapters
    expect(page.locator("#network-size")).to_contain_text("LoRA file ≈")
    pick_type(page, "LoCon")
    expect(page.locator("#network-reason")).to_contain_text("texture and style")
    expect(page.locator("#cfg-conv_dim input")).to_have_value("16")  # LyCORIS's default: the linear rank
    expect(page.locator("#cfg-conv_alpha input")).to_have_value("8")
    expect(page.locator("#network-size")).to_contain_text("LoCon file ≈")
    expect(page.locator("#network-size")).to_contain_text("modules")
    fill(page, "#cfg-conv_dim input", "8")
    network = saved_network(page, app, "locon.toml")
    assert network["network_module"] == "networks.lora"
    assert network["conv_dim"] == 8 and network["conv_alpha"] == 8
    assert network.get("network_args", []) == []

    pick_type(page, "LoRA")  # back: the conv fields go, and so do their values
    expect(page.locator("#cfg-conv_dim")).to_be_hidden()
    assert "conv_dim" not in saved_network(page, app, "lora.toml")


def test_choosing_loha_writes_lycoris_and_its_algo_and_the_preset_follows(page, app):
    from playwright.sync_api import expect

    open_model_tab(page, app.url)
    open_section(page, "network")
    pick_type(page, "LoHa")
    expect(page.locator("#network-reason")).to_contain_text("Hadamard product")
    expect(page.locator("#network-preset input")).to_have_value("full")  # LyCORIS's default preset
    expect(page.locator("#cfg-conv_dim input")).to_have_value("16")  # full has the resnet convolutions
    network = saved_network(page, app, "loha.toml")
    assert network["network_module"] == "lycoris.kohya"
    assert network["network_args"] == ["algo=loha", "preset=full"]

    page.locator("#network-preset input").click()
    page.get_by_role("option", name="attn-only").click()
    expect(page.locator("#network-reason")).to_contain_text("Only the attention projections")
    expect(page.locator("#cfg-conv_dim")).to_be_hidden()  # attn-only has no convolutions
    page.locator("#advanced-network > button").click()
    expect(page.locator("#cfg-network_args input")).to_have_value("algo=loha preset=attn-only")
    network = saved_network(page, app, "loha-attn.toml")
    assert network["network_args"] == ["algo=loha", "preset=attn-only"] and "conv_dim" not in network


def test_a_loaded_kohya_toml_with_algo_lokr_shows_lokr(page, app):
    from playwright.sync_api import expect

    app.settings.configs_dir.mkdir(parents=True, exist_ok=True)
    (app.settings.configs_dir / "kohya-lokr.toml").write_text(
        '[network]\nnetwork_dim = 8\nnetwork_module = "lycoris.kohya"\n'
        'network_args = ["algo=lokr", "preset=attn-mlp", "factor=8"]\n', encoding="utf-8")
    open_model_tab(page, app.url)
    open_section(page, "network")
    fill(page, "#config-path textarea", "kohya-lokr.toml")
    page.locator("#load-toml").click()
    expect(page.locator("#config-message")).to_contain_text("Loaded")
    expect(page.locator("#network-type input[value='LoKr']")).to_be_checked()
    expect(page.locator("#network-reason")).to_contain_text("Kronecker product")
    expect(page.locator("#network-preset input")).to_have_value("attn-mlp")
    expect(page.locator("#cfg-conv_dim")).to_be_hidden()


def test_algo_boft_in_network_args_shows_the_error_at_the_field_and_start_is_off(page, app):
    from playwright.sync_api import expect

    open_model_tab(page, app.url)
    open_section(page, "network")
    pick_type(page, "LoHa")
    page.locator("#advanced-network > button").click()
    expect(page.locator("#cfg-network_args input")).to_have_value("algo=loha preset=full")
    fill(page, "#cfg-network_args input", "algo=boft preset=full")
    expect(page.locator("#err-network_args")).to_contain_text("algo=boft is a LyCORIS algorithm not supported here")
    expect(page.locator("#network-reason")).to_contain_text("algo=boft")
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#start-btn")).to_be_disabled()
    assert app.supervisor.discover() == []

    page.get_by_role("tab", name="Model & preset").click()  # picking a type again writes valid args
    pick_type(page, "LoKr")
    expect(page.locator("#err-network_args")).to_be_hidden()
    expect(page.locator("#cfg-network_args input")).to_have_value("algo=lokr preset=full")
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#start-btn")).to_be_enabled()


def locon_tensors() -> dict:
    """kohya LoCon tensors written by hand: two attention Linears and a text-encoder one (down [r, in]), two resnet
    3x3 convs (down [r, in, 3, 3], up [out, r, 1, 1])."""
    import numpy as np

    def module(name: str, n_in: int, n_out: int, conv: bool) -> dict:
        down = np.zeros((8, n_in, 3, 3) if conv else (4, n_in), np.float16)
        up = np.zeros((n_out, 8, 1, 1) if conv else (n_out, 4), np.float16)
        return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                f"{name}.alpha": np.array(2.0, np.float16)}

    attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_{}"
    out = module(attn.format("q"), 320, 320, False) | module(attn.format("k"), 320, 320, False)
    out |= module("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, False)
    for i in (1, 2):
        out |= module(f"lora_unet_down_blocks_0_resnets_0_conv{i}", 320, 320, True)
    return out


def test_results_shows_the_type_and_module_counts_of_a_locon_file(page, app):
    """A LoCon file placed in a run folder: its type and its linear and conv modules per part."""
    import json
    import re

    from playwright.sync_api import expect
    from safetensors.numpy import save_file

    from training.contract.events import EventWriter

    run_dir = app.settings.data_dir / "runs" / "style" / "20240101-120000"
    run_dir.mkdir(parents=True)
    lora = run_dir / "style.safetensors"
    save_file(locon_tensors(), str(lora), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4",
                                                    "ss_network_args": json.dumps({"conv_dim": "8",
                                                                                   "conv_alpha": "2"})})
    events = EventWriter(run_dir)
    events.emit("start", run_id=run_dir.name, pid=1, total_steps=10, total_epochs=1)
    events.emit("done", path=str(lora), step=10)
    events.close()

    open_model_tab(page, app.url)
    page.get_by_role("tab", name="Results").click()
    page.locator("#results-refresh").click()
    page.locator("#results-run input").click()
    page.get_by_role("option", name=re.compile(r"^style · ")).first.click()
    report = page.locator("#results-report")
    expect(report).to_contain_text("style.safetensors")
    expect(report).to_contain_text("LoCon (networks.lora, conv_dim=8 conv_alpha=2)")
    expect(report).to_contain_text("UNet: 2 linear, 2 conv · text encoder: 1 linear")


@pytest.mark.slow
def test_locon_chosen_in_the_ui_trains_and_results_counts_its_conv_modules(page, tmp_path, tiny_sd1, dataset_dir):
    """End to end: a tiny SD1 model and dataset loaded from a TOML, LoCon picked in the Network section, Start, the
    run to its end, and the Results tab shows the final LoRA's conv modules. Needs the engine's LoCon (the adapters
    on the resnet convs and their export)."""
    import re

    from playwright.sync_api import expect
    from timing import ms

    ui, demo = serve(tmp_path / "data", dry_run=False)
    try:
        ui.settings.configs_dir.mkdir(parents=True, exist_ok=True)
        (ui.settings.configs_dir / "tiny.toml").write_text(
            f'pretrained_model_name_or_path = "{tiny_sd1}"\ntrain_data_dir = "{dataset_dir}"\n'
            'resolution = "64"\nmin_bucket_reso = 64\nmax_bucket_reso = 128\nnetwork_dim = 4\nnetwork_alpha = 2.0\n'
            'max_train_steps = 4\nmixed_precision = "no"\noutput_name = "locon"\n', encoding="utf-8")
        open_model_tab(page, ui.url)
        fill(page, "#config-path textarea", "tiny.toml")
        page.locator("#load-toml").click()
        expect(page.locator("#config-message")).to_contain_text("Loaded")
        open_section(page, "network")
        pick_type(page, "LoCon")
        expect(page.locator("#cfg-conv_dim input")).to_have_value("4")
        page.get_by_role("tab", name="Train").click()
        page.locator("#start-btn").click()
        expect(page.locator("#start-message")).to_contain_text("started")
        job = ui.supervisor.discover()[0].run_dir / "job.toml"
        assert tomllib.loads(job.read_text(encoding="utf-8"))["network"]["conv_dim"] == 4  # the run's own job
        expect(page.locator("#run-status")).to_contain_text("done", timeout=ms(300))

        page.get_by_role("tab", name="Results").click()
        page.locator("#results-refresh").click()
        page.locator("#results-run input").click()
        page.get_by_role("option", name=re.compile(r"^locon · .* · done")).first.click()
        report = page.locator("#results-report")
        expect(report).to_contain_text("locon.safetensors")
        expect(report).to_contain_text("LoCon (networks.lora")
        expect(report).to_contain_text(re.compile(r"UNet: \d+ linear, [1-9]\d* conv"))
    finally:
        stop_all(ui.supervisor)
        demo.close()
