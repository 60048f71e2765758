"""Every network type exports the tensors kohya/LyCORIS loaders read, at the scale they apply: LoRA, LoCon, LoHa
(plain and Tucker), LoKr (whole factors, decomposed, both decomposed with Tucker) and LoCon+DoRA.

For each type, on a tiny SD1 UNet + text encoder whose adapters hold random non-zero tensors, the delta of every
module rebuilt from the exported file (float32) by this suite's formulas (lora_types.py) and by lycoris-lora's own
functional code equals what peft itself merges into the weight; export -> import -> export gives the same tensors;
the self-check passes and counts linear and conv modules; a missing key or a wrong shape fails it with one line.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from lora_checks import text_encoders
from lora_types import (
    CASES,
    adapter_layers,
    export,
    formula_delta,
    lycoris_delta,
    merged_delta,
    module_tensors,
    relative_error,
    typed_pipeline,
)
from safetensors.torch import save_file
from tiny_models import build_tiny_pipeline

from training.contract.lora_check import SelfCheck
from training.lora_files.importer import load_kohya_into_peft, read_kohya
from training.lora_files.names import canonical_name
from training.lora_files.self_check import verify_lora
from training.models.families import FAMILIES

SD1 = FAMILIES["sd1"]


@pytest.fixture(scope="module", params=sorted(CASES))
def typed(request, tmp_path_factory):
    """The case, its trained pipeline, the fp16 file (path, tensors) and a float32 export of the same adapters."""
    case = CASES[request.param]
    pipe = typed_pipeline(case)
    folder = tmp_path_factory.mktemp(request.param)
    sd16 = export(pipe, case, "sd1", folder / "lora.safetensors")
    sd32 = export(pipe, case, "sd1", folder / "lora32.safetensors", torch.float32)
    return SimpleNamespace(key=request.param, case=case, pipe=pipe, path=folder / "lora.safetensors",
                           path32=folder / "lora32.safetensors", sd16=sd16, sd32=sd32)


def _modules(pipe):
    """(kohya name, peft layer) of every adapter layer in the UNet and the text encoder."""
    out = []
    for component, model in (("unet", pipe.unet), (0, pipe.text_encoder)):
        for path, layer in adapter_layers(model).items():
            out.append((canonical_name(component, path, SD1, model, 1), layer))
    return out


def test_file_delta_equals_peft_by_formula_and_by_lycoris(typed):
    """The change each loader computes from the file is the change peft merges, module by module."""
    tensors = module_tensors(typed.sd32)
    modules = _modules(typed.pipe)
    assert len(modules) == len(tensors) and {n for n, _ in modules} == set(tensors)
    worst_formula = worst_lycoris = 0.0
    for name, layer in modules:
        want = merged_delta(layer)
        assert float(want.abs().max()) > 0, name
        weight = layer.get_base_layer().weight.detach().double()
        worst_formula = max(worst_formula, relative_error(formula_delta(tensors[name], weight), want))
        worst_lycoris = max(worst_lycoris, relative_error(lycoris_delta(tensors[name], weight), want))
    assert worst_formula < 1e-4 and worst_lycoris < 1e-4, (worst_formula, worst_lycoris)


def test_lycoris_reads_the_file_with_its_own_module_loader(typed):
    """LyCORIS's own reader (the per-module loader its create_network_from_weights uses: type from the keys, alpha,
    shapes) builds modules from our file whose forward adds what peft's adds, on every UNet module. (Text-encoder
    names are not looked up: LyCORIS names them from the model's own paths, which transformers 5 writes without
    ``text_model.``.)"""
    from lycoris.modules import get_module, make_module
    from safetensors.torch import load_file

    state = load_file(str(typed.path32))
    bare = build_tiny_pipeline("sd1")  # same base weights as typed.pipe
    worst = 0.0
    for path, layer in adapter_layers(typed.pipe.unet).items():
        if typed.case.peft == "LoKrConfig" and path in ("conv_in", "conv_out"):
            continue  # LyCORIS guesses the Kronecker factor from the shapes, which fails on a 4-channel side
        name = "lora_unet_" + path.replace(".", "_")
        target = bare.unet.get_submodule(path)
        module = make_module(*get_module(state, name), name, target)
        module.apply_to()
        shape = (2, target.weight.shape[1], 8, 8) if target.weight.dim() == 4 else (2, target.weight.shape[1])
        x = torch.randn(shape, generator=torch.Generator().manual_seed(len(path)))
        with torch.no_grad():
            want = layer(x) - layer.get_base_layer()(x)
            got = target(x) - module.org_forward(x)
        worst = max(worst, relative_error(got.double(), want.double()))
    assert worst < 1e-3, worst  # outputs, not weights: the change is the difference of two larger outputs


def test_layout_per_type(typed):
    """The keys and shapes each type writes: 2-D factors for linears, kernels where loaders expect them."""
    parts = {k.partition(".")[2] for k in typed.sd16}
    conv1 = "lora_unet_down_blocks_0_resnets_0_conv1"
    down = typed.sd16.get(f"{conv1}.lora_down.weight")
    expected = {
        "lora": {"lora_down.weight", "lora_up.weight", "alpha"},
        "locon": {"lora_down.weight", "lora_up.weight", "alpha"},
        "dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
        "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
        "loha_tucker": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"},
        "lokr": {"lokr_w1", "lokr_w2", "alpha"},
        "lokr_decomposed": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
        "lokr_both_tucker": {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"},
    }[typed.key]
    assert parts >= expected - {"lokr_w2", "lokr_t2"} and parts <= expected | {"lokr_w2", "lokr_w2_a", "lokr_w2_b"}
    assert all(t.ndim == 0 for k, t in typed.sd16.items() if k.endswith(".alpha"))
    if down is not None:
        assert down.shape[2:] == (3, 3) and typed.sd16[f"{conv1}.lora_up.weight"].shape[2:] == (1, 1)
    if typed.key == "dora":
        to_q = typed.sd16["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale"]
        conv = typed.sd16["lora_unet_down_blocks_0_resnets_0_conv1.dora_scale"]
        assert to_q.shape == (32, 1) and conv.shape == (32, 1, 1, 1)  # LyCORIS's wd_on_output layout, never 1-D
    if typed.key == "lokr":  # both factors whole: loaders use scale 1, so alpha = r and peft's scale is in lokr_w1
        whole = [k.partition(".")[0] for k in typed.sd16 if k.endswith(".lokr_w2")]
        assert whole and {float(typed.sd16[f"{name}.alpha"]) for name in whole} == {8.0}


def test_export_import_export_gives_the_same_tensors(typed):
    fresh = build_tiny_pipeline("sd1", seed=5)  # other base weights: DoRA's magnitudes must not depend on them
    report = load_kohya_into_peft(typed.path, fresh.unet, [fresh.text_encoder], SD1)
    assert report.kind == typed.case.kind and report.modules == len({k.partition(".")[0] for k in typed.sd16})
    again = export(fresh, typed.case, "sd1", typed.path.with_name("again.safetensors"))
    assert again.keys() == typed.sd16.keys()
    assert [k for k in typed.sd16 if not torch.equal(again[k], typed.sd16[k])] == []


def test_import_into_the_adapters_of_a_resumed_run_restores_the_delta(typed):
    """Resume: the run built the same adapters (other random values); loading the file makes every delta the file's."""
    resumed = typed_pipeline(typed.case, seed=9)
    load_kohya_into_peft(typed.path32, resumed.unet,
                         [resumed.text_encoder], SD1)
    for (name, want), (_, got) in zip(_modules(typed.pipe), _modules(resumed), strict=True):
        assert relative_error(merged_delta(got), merged_delta(want)) < 1e-5, name


def test_self_check_passes_and_counts_linear_and_conv_modules(typed):
    report = verify_lora(typed.path, SD1, typed.pipe.unet, [typed.pipe.text_encoder])
    assert report.ok, report.problems
    bases = [layer.get_base_layer() for _, layer in _modules(typed.pipe)]
    # "conv" is a spatial (3x3) conv, the layers conv_dim ranks; SD1's 1x1 proj_in/proj_out count as linear
    convs = sum(isinstance(b, torch.nn.Conv2d) and b.kernel_size != (1, 1) for b in bases)
    total = len(bases)
    assert (convs > 0) == bool(typed.case.conv)
    assert report.kinds == ({"linear": total - convs, "conv": convs} if convs else {"linear": total})
    counts = f"{total - convs} linear, {convs} conv" if convs else f"{total} linear"
    assert report.summary() == f"{total} of {total} modules matched ({counts})"
    back = SelfCheck.from_event({"check_result": report.to_event()})  # the checkpoint event carries the counts
    assert back is not None and back.kinds == report.kinds and back.summary() == report.summary()
    bare = build_tiny_pipeline("sd1")
    assert verify_lora(typed.path, SD1, bare.unet, [bare.text_encoder]).ok  # names and shapes alone hold too


def test_metadata_names_the_module_and_its_args_as_kohya_and_lycoris_write_them(typed):
    meta = read_kohya(typed.path)[1]
    lycoris = typed.case.config.get("network_module") == "lycoris.kohya"
    assert meta["ss_network_module"] == ("lycoris.kohya" if lycoris else "networks.lora")
    args = json.loads(meta.get("ss_network_args", "{}"))
    assert all(isinstance(v, str) for v in args.values())
    if lycoris:
        assert args["algo"] == {"loha": "loha", "lokr": "lokr"}.get(typed.key.split("_")[0], "lora")
        assert (args.get("dora_wd") == "True") == (typed.key == "dora")
    if typed.key == "locon":
        assert args == {"conv_dim": "3", "conv_alpha": "1.5"}


def _rewrite(path, tmp_path, edit):
    sd, meta = read_kohya(path)
    edit(sd)
    meta.pop("sshs_model_hash")
    out = tmp_path / "bad.safetensors"
    save_file(sd, str(out), metadata=meta)
    return out


RESNET = "lora_unet_down_blocks_0_resnets_0_conv1"
TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"


def _verify(typed, path):
    return verify_lora(path, SD1, typed.pipe.unet, [typed.pipe.text_encoder])


def _first_part(sd, name, skip=("alpha",)):
    return next(k for k in sorted(sd) if k.startswith(name + ".") and k.partition(".")[2] not in skip)


def test_a_missing_key_fails_the_self_check_with_one_line(typed, tmp_path):
    key = _first_part(typed.sd16, TO_K)
    part = key.partition(".")[2]
    report = _verify(typed, _rewrite(typed.path, tmp_path, lambda sd: sd.pop(key)))
    assert not report.ok and report.matched == report.expected - 1
    lines = [p for p in report.problems if f"'{TO_K}'" in p]
    # DoRA without its dora_scale is still a whole LoRA module, so only the model knows it is not the one trained
    wanted = f"module '{TO_K}' lacks {part}" if part != "dora_scale" else \
        f"module '{TO_K}': the model's adapter is DoRA, but the file lacks dora_scale"
    assert lines == [wanted], report.problems


def test_a_wrong_shape_fails_the_self_check_with_one_line(typed, tmp_path):
    key = _first_part(typed.sd16, TO_K, skip=("alpha", "dora_scale", "lokr_w1"))

    def cut(sd):
        sd[key] = sd[key][..., :-1].contiguous() if sd[key].shape[-1] > 1 else torch.cat([sd[key], sd[key]], -1)

    report = _verify(typed, _rewrite(typed.path, tmp_path, cut))
    assert not report.ok
    lines = [p for p in report.problems if p.startswith(f"module '{TO_K}': ")]
    assert len(lines) == 1 and ("shape" in lines[0] or "do not fit" in lines[0] or "divide" in lines[0]), lines


def test_a_wrong_value_fails_the_self_check(typed, tmp_path):
    """A file whose tensors load but whose delta is not the model's (a factor of another module) is caught."""
    key = _first_part(typed.sd16, TO_K, skip=("alpha",))
    other = key.replace("attn1_to_k", "attn1_to_v")
    report = _verify(typed, _rewrite(typed.path, tmp_path, lambda sd: sd.update({key: sd[other].clone()})))
    assert any(p.startswith(f"module '{TO_K}': the delta rebuilt from the file differs") for p in report.problems), \
        report.problems


def test_metadata_that_names_another_type_fails_the_self_check(typed, tmp_path):
    wrong = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(
        {"algo": "lokr" if not typed.key.startswith("lokr") else "loha"})}
    sd, meta = read_kohya(typed.path)
    meta.pop("sshs_model_hash")
    save_file(sd, str(tmp_path / "meta.safetensors"), metadata={**meta, **wrong})
    report = _verify(typed, tmp_path / "meta.safetensors")
    assert any("'ss_network_module'" in p and "algo=" in p for p in report.problems), report.problems
    assert report.matched == report.expected  # the modules themselves are fine


def test_resnet_convs_of_locon_are_named_as_kohya_names_them(typed):
    names = {k.partition(".")[0] for k in typed.sd16}
    if not typed.case.conv:  # kohya's LoRA without conv_dim: nothing of the resnets or samplers
        assert not any("resnets" in n or "samplers" in n for n in names)
        return
    for name in (RESNET, "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
                 "lora_unet_up_blocks_1_resnets_0_conv_shortcut",
                 "lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_up_blocks_0_upsamplers_0_conv",
                 "lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
                 "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"):
        assert name in names, name


def test_sdxl_exports_te1_and_te2_names_for_a_lycoris_type(tmp_path):
    case = CASES["loha"]
    pipe = typed_pipeline(case, "sdxl")
    sd = export(pipe, case, "sdxl", tmp_path / "xl.safetensors")
    names = {k.partition(".")[0] for k in sd}
    assert {n.split("_")[1] for n in names} == {"unet", "te1", "te2"}
    assert "lora_te1_text_model_encoder_layers_0_mlp_fc1" in names
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_unet_input_blocks_1_0_in_layers_2" in names and "lora_unet_label_emb_0_0" in names
    report = verify_lora(tmp_path / "xl.safetensors", FAMILIES["sdxl"], pipe.unet, text_encoders(pipe))
    assert report.ok, report.problems
    assert set(report.parts) == {"unet", "te1", "te2"}
