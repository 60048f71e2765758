"""A NetworkSpec's adapters injected into one model (the UNet or a text encoder), as peft layers.

LoRA, LoCon and DoRA are ``peft.LoraConfig`` layers (``use_dora`` for DoRA), LoHa ``peft.LoHaConfig`` and LoKr
``peft.LoKrConfig``; the modules and their ranks come from ``trained_targets`` (conv, per-block and per-module ranks
and alphas as peft's per-module patterns). Every adapter starts with a zero delta, so a fresh network leaves the
model's output unchanged. Scale = alpha / rank, kohya's and LyCORIS's convention (alpha 0 means alpha = rank, as in
both); LyCORIS scales a LoKr module whose two Kronecker factors are both full matrices by 1, and so does this
builder.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from training.contract.errors import UserError
from training.contract.network import KOHYA_LORA, NetworkSpec
from training.networks.dropout import LoraDropout, install_lora_dropout
from training.networks.lora import ADAPTER
from training.networks.sizes import lokr_shape
from training.networks.support import refusals
from training.networks.targets import ModuleInfo, Part, Ranks, Target, trained_targets

if TYPE_CHECKING:
    import torch


def module_infos(model: torch.nn.Module) -> list[ModuleInfo]:
    """Every Linear and Conv2d of ``model`` (exactly those classes, as sd-scripts and LyCORIS match them), with the
    classes of the modules that enclose it."""
    from torch import nn

    classes = {path: type(module).__name__ for path, module in model.named_modules()}
    infos = []
    for path, module in model.named_modules():
        if type(module) is nn.Linear:
            kind, n_in, n_out, kernel = "linear", module.in_features, module.out_features, 1
        elif type(module) is nn.Conv2d:
            kernel = int(module.kernel_size[0])
            kind = "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv3x3"
            n_in, n_out = module.in_channels, module.out_channels
        else:
            continue
        parts = path.split(".")
        blocks = tuple(classes[".".join(parts[:i])] for i in range(len(parts)))
        infos.append(ModuleInfo(path, kind, n_in, n_out, kernel, blocks))  # type: ignore[arg-type]
    return infos


def _pattern(path: str) -> str:
    return re.escape(path)


def _patterns(values: dict[str, Any], default: Any) -> dict[str, Any]:
    """peft's rank_pattern/alpha_pattern for the modules whose value differs from the default: one alternation per
    value, so peft tries a handful of regexes per module, not one per module (SDXL has hundreds)."""
    by_value: dict[Any, list[str]] = {}
    for path, value in values.items():
        if value != default:
            by_value.setdefault(value, []).append(_pattern(path))
    return {"(?:" + "|".join(paths) + ")": value for value, paths in by_value.items()}


def peft_config(spec: NetworkSpec, ranked: list[tuple[Target, int, float]], ranks: Ranks) -> Any:
    """The peft config that puts ``spec``'s adapter on exactly the ``ranked`` targets, each at its own rank/alpha."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    alphas = {t.path: alpha for t, _, alpha in ranked}
    if spec.algo == "lokr":
        for t, rank, _ in ranked:
            shape = lokr_shape(t.module, rank, spec)
            if shape.full_w1 and shape.full_w2:  # LyCORIS scales such a module by 1, whatever alpha says
                alphas[t.path] = rank
    common = {"r": ranks.rank, "target_modules": "^(?:" + "|".join(_pattern(t.path) for t, _, _ in ranked) + ")$",
              "rank_pattern": _patterns({t.path: rank for t, rank, _ in ranked}, ranks.rank),
              "alpha_pattern": _patterns(alphas, ranks.alpha)}
    if spec.algo == "loha":
        return LoHaConfig(alpha=ranks.alpha, rank_dropout=spec.rank_dropout, module_dropout=spec.module_dropout,
                          use_effective_conv2d=spec.use_tucker, init_weights=True, **common)
    if spec.algo == "lokr":
        return LoKrConfig(alpha=ranks.alpha, rank_dropout=spec.rank_dropout, module_dropout=spec.module_dropout,
                          use_effective_conv2d=spec.use_tucker, decompose_both=spec.decompose_both,
                          decompose_factor=spec.factor, init_weights="lycoris", **common)
    return LoraConfig(lora_alpha=ranks.alpha, use_dora=spec.dora_wd, init_lora_weights=True, **common)


def add_network(model: torch.nn.Module, spec: NetworkSpec, ranks: Ranks, part: Part,
                network_dropout: float = 0.0) -> list[torch.nn.Parameter]:
    """Inject ``spec``'s adapters into ``model`` and return their trainable parameters (everything else frozen)."""
    from peft import inject_adapter_in_model

    problems = refusals(spec, network_dropout)
    if problems:
        raise UserError(problems[0])
    ranked = trained_targets(spec, module_infos(model), part, ranks)
    if not ranked:
        raise UserError(f"network preset={spec.preset} selects no module of the {part.replace('_', ' ')}")
    model.requires_grad_(False)
    inject_adapter_in_model(peft_config(spec, ranked, ranks), model, adapter_name=ADAPTER)
    if spec.algo == "lora":  # sd-scripts hands network_dropout to LyCORIS as its dropout unless network_args set one
        neuron = network_dropout if spec.module == KOHYA_LORA else spec.dropout or network_dropout
        dropout = LoraDropout(neuron, spec.rank_dropout, spec.module_dropout)
        install_lora_dropout(model, dropout)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise UserError(f"no adapter parameters were created in the {part.replace('_', ' ')}")
    return params


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor of ``model`` (LoRA's A/B and DoRA's magnitude, LoHa's and LoKr's factors): the trainable
    parameters, as the resumable state stores them."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
