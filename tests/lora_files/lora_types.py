"""Tiny pipelines trained-looking with each network type (LoRA, LoCon, LoHa, LoKr, DoRA, Tucker), built with peft's
own configs, plus this test suite's own reading of the kohya/LyCORIS file layouts (written here independently of
training/lora_files, so a wrong formula there cannot hide behind the same formula here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from lora_checks import text_encoders
from tiny_models import build_tiny_pipeline

from training.lora_files.export import build_metadata, kohya_state_dict, save_lora
from training.models.families import FAMILIES

# Every module kind a preset can select: attention, feed-forward, proj_in/out, resnet convs and time projection,
# down/upsampler convs ("conv"), conv_in/conv_out, the time (and SDXL's add) embedding linears.
UNET_LINEAR = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
UNET_CONV = ["conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv", "conv_in", "conv_out", "linear_1", "linear_2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass(frozen=True)
class Case:
    """One network type: the peft config class and its arguments, and the config keys the run would carry."""

    kind: str
    peft: str  # LoraConfig / LoHaConfig / LoKrConfig
    args: dict = field(default_factory=dict)
    conv: bool = True
    config: dict = field(default_factory=dict)  # network_module / network_args / conv_dim for the metadata


LYCORIS = "lycoris.kohya"
CASES = {
    "lora": Case("LoRA", "LoraConfig", {"r": 4, "lora_alpha": 2.0}, conv=False),
    "locon": Case("LoCon", "LoraConfig", {"r": 4, "lora_alpha": 2.0, "rank_pattern": {"conv1": 3, "conv2": 3},
                                          "alpha_pattern": {"conv1": 1.5, "conv2": 1.5}},
                  config={"network_args": ["conv_dim=3", "conv_alpha=1.5"]}),
    "loha": Case("LoHa", "LoHaConfig", {"r": 4, "alpha": 2.0},
                 config={"network_module": LYCORIS, "network_args": ["algo=loha"]}),
    "loha_tucker": Case("LoHa", "LoHaConfig", {"r": 4, "alpha": 2.0, "use_effective_conv2d": True},
                        config={"network_module": LYCORIS, "network_args": ["algo=loha", "use_tucker=True"]}),
    "lokr": Case("LoKr", "LoKrConfig", {"r": 8, "alpha": 4.0},  # r >= half each factor: both factors whole
                 config={"network_module": LYCORIS, "network_args": ["algo=lokr"]}),
    "lokr_decomposed": Case("LoKr", "LoKrConfig", {"r": 2, "alpha": 3.0},
                            config={"network_module": LYCORIS, "network_args": ["algo=lokr"]}),
    "lokr_both_tucker": Case("LoKr", "LoKrConfig", {"r": 1, "alpha": 0.5, "decompose_both": True,
                                                    "use_effective_conv2d": True},
                             config={"network_module": LYCORIS, "network_args": [
                                 "algo=lokr", "decompose_both=True", "use_tucker=True"]}),
    "dora": Case("LoCon+DoRA", "LoraConfig", {"r": 4, "lora_alpha": 2.0, "use_dora": True},
                 config={"network_module": LYCORIS, "network_args": ["algo=locon", "dora_wd=True"]}),
}
ADAPTER_MARKERS = ("lora_A", "lora_B", "hada_", "lokr_")


def typed_pipeline(case: Case, family: str = "sd1", seed: int = 0):
    """Tiny pipeline with the case's adapters on the UNet and every text encoder, every adapter tensor random and
    non-zero (DoRA magnitudes moved off the base weights' norms), so each module's delta is a real one."""
    import peft

    pipe = build_tiny_pipeline(family)
    config_class = getattr(peft, case.peft)
    unet_targets = UNET_LINEAR + (UNET_CONV if case.conv else [])
    peft.inject_adapter_in_model(config_class(target_modules=unet_targets, **case.args), pipe.unet)
    te_args = {k: v for k, v in case.args.items() if k not in ("rank_pattern", "alpha_pattern")}
    for te in text_encoders(pipe):
        peft.inject_adapter_in_model(config_class(target_modules=TE_TARGETS, **te_args), te)
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for model in (pipe.unet, *text_encoders(pipe)):
            for name, p in model.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))
                elif any(m in name for m in ADAPTER_MARKERS):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return pipe


def adapter_layers(model) -> dict[str, torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {path: m for path, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def merged_delta(layer) -> torch.Tensor:
    """What peft itself applies: merge a copy of the layer and take the change of its weight."""
    import copy

    merged = copy.deepcopy(layer)
    merged.merge(adapter_names=["default"])
    return (merged.get_base_layer().weight - layer.get_base_layer().weight).detach().double()


def metadata_config(case: Case) -> dict:
    return {"network_dim": 4, "network_alpha": 2.0, "resolution": 64, "output_name": "tiny", **case.config}


def export(pipe, case: Case, family: str, path: Path, dtype=torch.float16) -> dict[str, torch.Tensor]:
    sd = kohya_state_dict(pipe.unet, text_encoders(pipe), FAMILIES[family], dtype)
    save_lora(path, sd, build_metadata(metadata_config(case), FAMILIES[family], {}, state_dict=sd))
    return sd


def module_tensors(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        name, _, part = key.partition(".")
        grouped.setdefault(name, {})[part] = tensor.double()
    return grouped


# --- this suite's reading of the formats: the delta A1111/Forge, ComfyUI and LyCORIS rebuild --------------------

def _tucker(core, w_out, w_in):
    """[out, in, kh, kw] = sum_ij core[i, j] * w_out[i, :] (x) w_in[j, :]."""
    return torch.einsum("ijkl,ip,jr->prkl", core, w_out, w_in)


def _lora_delta(t, weight):
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    rank = down.shape[0]
    delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)).reshape(weight.shape) * (t["alpha"] / rank)
    if "dora_scale" in t:  # LyCORIS's wd_on_output: each output row rescaled to its stored magnitude
        merged = weight + delta
        norms = merged.reshape(weight.shape[0], -1).norm(dim=1).reshape(t["dora_scale"].shape)
        delta = merged * (t["dora_scale"] / norms) - weight
    return delta


def _loha_delta(t, weight):
    if "hada_t1" in t:
        first = _tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"])
        second = _tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    else:
        first, second = t["hada_w1_a"] @ t["hada_w1_b"], t["hada_w2_a"] @ t["hada_w2_b"]
    return (first * second).reshape(weight.shape) * (t["alpha"] / t["hada_w1_b"].shape[0])


def _lokr_delta(t, weight):
    rank = None
    w1 = t.get("lokr_w1")
    if w1 is None:
        w1, rank = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
    w2 = t.get("lokr_w2")
    if w2 is None:
        rank = t["lokr_w2_b"].shape[0]
        w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"]) if "lokr_t2" in t else t["lokr_w2_a"] @ t[
            "lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = 1.0 if rank is None else t["alpha"] / rank  # whole factors: scale 1 in every loader
    return torch.kron(w1, w2).reshape(weight.shape) * scale


def formula_delta(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    if "lora_down.weight" in t:
        return _lora_delta(t, weight)
    return _loha_delta(t, weight) if "hada_w1_a" in t else _lokr_delta(t, weight)


def lycoris_delta(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The same delta from lycoris-lora's own functional code (the independent oracle), torch backend."""
    from lycoris.functional import locon, loha, lokr
    from lycoris.functional.general import weight_decompose

    g = {k: v.float() for k, v in t.items()}
    if "lora_down.weight" in g:
        rank = g["lora_down.weight"].shape[0]
        delta = locon.diff_weight(g["lora_down.weight"], g["lora_up.weight"], None,
                                  gamma=float(g["alpha"]) / rank, backend="torch").reshape(weight.shape)
        if "dora_scale" in g:
            w = weight.float()
            delta = weight_decompose(w + delta, g["dora_scale"], 1, True, backend="torch") - w
        return delta.double()
    if "hada_w1_a" in g:
        scale = float(g["alpha"]) / g["hada_w1_b"].shape[0]
        return loha.diff_weight(g["hada_w1_b"], g["hada_w1_a"], g["hada_w2_b"], g["hada_w2_a"], g.get("hada_t1"),
                                g.get("hada_t2"), gamma=scale, backend="torch").reshape(weight.shape).double()
    parts = [g.get(p) for p in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")]
    # lycoris's functional lokr divides gamma by the rank it reads off w1_a / w2_a ([*, r] without Tucker; a Tucker
    # w2_a is [r, b], so its second side stands in for the rank there): give it the gamma that makes alpha / r.
    if "lokr_w1_a" in g or "lokr_w2_a" in g:
        rank = (g["lokr_w2_b"] if "lokr_w2_b" in g else g["lokr_w1_b"]).shape[0]
        read = (g["lokr_w1_a"] if "lokr_w1_a" in g else g["lokr_w2_a"]).shape[1]
        gamma = float(g["alpha"]) / rank * read
    else:
        gamma = 1.0
    return lokr.diff_weight(*parts, gamma=gamma, backend="torch").reshape(weight.shape).double()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))
