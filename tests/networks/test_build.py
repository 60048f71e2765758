"""Adapters built per network type on the tiny models: a fresh network changes nothing, every selected module gets
its adapter at the right rank and scale (LyCORIS's own modules on the same layers are the reference), kohya's
dropouts act on LoRA layers in training only, and what peft cannot build is refused in one line."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny_pipeline

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.contract.network import LYCORIS
from training.networks.build import Ranks, adapter_state, add_network, module_infos
from training.networks.lora import ADAPTER
from training.networks.targets import select_targets

TYPES = {
    "LoRA": {},
    "LoCon": {"conv_dim": 2, "conv_alpha": 1.0},
    "LoCon (LyCORIS)": {"network_module": LYCORIS, "network_args": ["algo=locon", "conv_dim=2", "conv_alpha=1"]},
    "LoCon+DoRA": {"network_module": LYCORIS, "network_args": ["algo=locon", "dora_wd=True"]},
    "LoHa": {"network_module": LYCORIS, "network_args": ["algo=loha", "conv_dim=2", "conv_alpha=1"]},
    "LoHa Tucker": {"network_module": LYCORIS, "network_args": ["algo=loha", "use_tucker=True"]},
    "LoKr": {"network_module": LYCORIS, "network_args": ["algo=lokr", "factor=4"]},
    "LoKr decompose_both": {"network_module": LYCORIS, "network_args": ["algo=lokr", "decompose_both=True",
                                                                        "use_tucker=True"]},
}


def config(kind: str, **extra) -> TrainConfig:
    return TrainConfig(**({"network_dim": 4, "network_alpha": 2.0} | TYPES[kind] | extra))


def unet_inputs(pipe, sdxl: bool):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    kwargs = {}
    if sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 24, generator=generator),
                                       "time_ids": torch.randn(2, 6, generator=generator)}
    return (x, torch.tensor([10, 500]), context), kwargs


def adapter_layers(model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("kind", list(TYPES))
def test_a_fresh_network_leaves_every_output_unchanged(family, kind):
    pipe = build_tiny_pipeline(family)
    sdxl = family == "sdxl"
    args, kwargs = unet_inputs(pipe, sdxl)
    ids = torch.randint(0, 90, (2, 77), generator=torch.Generator().manual_seed(1))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
    with torch.no_grad():
        before = [pipe.unet(*args, **kwargs).sample] + [te(ids).last_hidden_state for te in encoders]
    cfg = config(kind)
    spec, ranks = cfg.network, Ranks.of(cfg.network, cfg.network_dim, cfg.network_alpha)
    params = add_network(pipe.unet, spec, ranks, "unet")
    for te in encoders:
        params += add_network(te, spec, ranks, "text_encoder")
    with torch.no_grad():
        after = [pipe.unet(*args, **kwargs).sample] + [te(ids).last_hidden_state for te in encoders]
    for b, a in zip(before, after, strict=True):
        assert torch.equal(a, b)
    # the adapters are real: every one is trainable and the frozen base is not
    assert params and all(p.requires_grad for p in params)
    assert sum(p.requires_grad for p in pipe.unet.parameters()) == len(adapter_state(pipe.unet))
    layers = {m.__class__.__module__.split(".")[2] for m in adapter_layers(pipe.unet)}
    assert layers == {{"lora": "lora", "loha": "loha", "lokr": "lokr"}[spec.algo]}


@pytest.mark.parametrize("kind", list(TYPES))
def test_every_selected_module_and_no_other_gets_an_adapter(kind):
    pipe = build_tiny_pipeline("sd1")
    cfg = config(kind)
    spec = cfg.network
    expected = {t.path for t in select_targets(spec, module_infos(pipe.unet), "unet")}
    add_network(pipe.unet, spec, Ranks.of(spec, 4, 2.0), "unet")
    wrapped = {p for p, m in pipe.unet.named_modules() if m in adapter_layers(pipe.unet)}
    assert wrapped == expected


def lycoris_module(algo: str, base, dim: int, alpha: float, spec):
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    if algo == "lokr":
        return LokrModule("m", base, 1.0, dim, alpha, factor=spec.factor, decompose_both=spec.decompose_both,
                          use_tucker=spec.use_tucker)
    module = {"lora": LoConModule, "loha": LohaModule}[algo]
    return module("m", base, 1.0, dim, alpha, use_tucker=spec.use_tucker)


@pytest.mark.parametrize(("kind", "rank"), [("LoCon (LyCORIS)", 4), ("LoHa", 4), ("LoKr", 4), ("LoKr", 2),
                                            ("LoKr decompose_both", 2), ("LoKr decompose_both", 4)])
def test_each_module_scales_as_lycoris_scales_it(kind, rank):
    """alpha / rank (conv alpha / conv rank on 3x3 convs); a LoKr module whose factors are both full matrices is
    scaled by 1, as LyCORIS does: its modules on the same layers give the reference scale."""
    pipe = build_tiny_pipeline("sd1")
    cfg = config(kind, network_dim=rank)
    spec = cfg.network
    ranks = Ranks.of(spec, rank, 2.0)
    targets = select_targets(spec, module_infos(pipe.unet), "unet")
    references = {}
    for t in targets:
        dim, alpha = (ranks.conv_rank, ranks.conv_alpha) if t.conv_rank else (ranks.rank, ranks.alpha)
        references[t.path] = lycoris_module(spec.algo, pipe.unet.get_submodule(t.path), dim, alpha, spec).scale
    add_network(pipe.unet, spec, ranks, "unet")
    scales = {t.path: float(pipe.unet.get_submodule(t.path).scaling[ADAPTER]) for t in targets}
    assert scales == pytest.approx(references)


def test_lora_dropouts_act_in_training_only():
    pipe = build_tiny_pipeline("sd1")
    cfg = TrainConfig(network_dim=4, network_alpha=4.0, network_args=["module_dropout=1"])
    spec = cfg.network
    add_network(pipe.unet, spec, Ranks.of(spec, 4, 4.0), "unet")
    layer = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    torch.nn.init.normal_(layer.lora_B[ADAPTER].weight)
    x = torch.randn(8, 5, layer.in_features)
    base = layer.get_base_layer()(x)
    layer.train()
    assert torch.equal(layer(x), base)  # module_dropout = 1: the adapter never contributes while training
    layer.eval()
    assert not torch.allclose(layer(x), base)


def test_rank_dropout_zeroes_whole_ranks_per_sample_and_rescales_the_rest():
    pipe = build_tiny_pipeline("sd1")
    cfg = TrainConfig(network_dim=4, network_alpha=4.0, network_args=["rank_dropout=0.5"], network_dropout=0.0)
    spec = cfg.network
    add_network(pipe.unet, spec, Ranks.of(spec, 4, 4.0), "unet")
    layer = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    seen = []
    layer.lora_A[ADAPTER].register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    x = torch.randn(64, 5, layer.in_features)
    layer.eval()
    full = layer.lora_A[ADAPTER](x).detach()
    seen.clear()
    layer.train()
    layer(x)
    hidden = seen[-1]
    for sample in range(64):
        for rank in range(4):
            kept = hidden[sample, :, rank]
            assert torch.allclose(kept, 0 * kept) or torch.allclose(kept, full[sample, :, rank] * 2.0)
    dropped = (hidden.abs().sum(dim=1) == 0).float().mean()
    assert 0.25 < float(dropped) < 0.75  # about half of the ranks, per sample


def test_network_dropout_drops_the_lora_hidden_values():
    pipe = build_tiny_pipeline("sd1")
    cfg = TrainConfig(network_dim=4, network_alpha=4.0, network_dropout=0.5)
    spec = cfg.network
    add_network(pipe.unet, spec, Ranks.of(spec, 4, 4.0), "unet", cfg.network_dropout)
    layer = pipe.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    seen = []
    layer.lora_A[ADAPTER].register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    x = torch.randn(16, 7, layer.in_features)
    layer.train()
    layer(x)
    zeros = float((seen[-1] == 0).float().mean())
    assert 0.3 < zeros < 0.7
    layer.eval()
    layer(x)
    assert float((seen[-1] == 0).float().mean()) == 0.0


@pytest.mark.parametrize(("settings", "words"), [
    ({"network_module": LYCORIS, "network_args": ["algo=locon", "use_tucker=True"]}, "use_tucker"),
    ({"network_module": LYCORIS, "network_args": ["algo=loha"], "network_dropout": 0.1}, "neuron dropout"),
    ({"network_module": LYCORIS, "network_args": ["algo=locon", "dora_wd=True", "rank_dropout=0.1"]}, "DoRA"),
    ({"network_module": LYCORIS, "network_args": ["algo=locon", "dora_wd=True", "wd_on_output=False"]},
     "wd_on_output"),
])
def test_what_peft_cannot_build_is_refused_in_one_line(settings, words):
    pipe = build_tiny_pipeline("sd1")
    cfg = TrainConfig(network_dim=4, network_alpha=2.0, **settings)
    with pytest.raises(UserError) as err:
        add_network(pipe.unet, cfg.network, Ranks.of(cfg.network, 4, 2.0), "unet", cfg.network_dropout)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_saved_adapter_state_loads_only_into_the_same_network():
    """The resumable state's adapter tensors: all of them, per type; another type, rank or preset is refused."""
    from training.run.checkpoints import load_adapter_state

    def built(kind: str, **extra):
        pipe = build_tiny_pipeline("sd1")
        cfg = config(kind, **extra)
        add_network(pipe.unet, cfg.network, Ranks.of(cfg.network, cfg.network_dim, 2.0), "unet")
        return pipe.unet

    loha = built("LoHa")
    saved = {k: v.clone() + 1.0 for k, v in adapter_state(loha).items()}
    assert {k.rsplit(".", 2)[-2] for k in saved} == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
    again = built("LoHa")
    load_adapter_state(again, saved, "state")
    assert all(torch.equal(v, saved[k]) for k, v in adapter_state(again).items())
    for other in (built("LoKr"), built("LoHa", network_dim=8), built("LoHa Tucker")):
        with pytest.raises(RuntimeError, match="does not match this network"):
            load_adapter_state(other, saved, "state")
