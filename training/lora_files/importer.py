"""kohya-format LoRA -> peft adapter: continue training from a LoRA (``network_weights``) or load one to evaluate.

Module names are resolved by lookup in a table built from the real models (both UNet conventions, both TE forms,
``lora_te``/``lora_te1``), never by guessing where the ``_`` were dots. An unknown name is an error.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.contract.errors import UserError
from training.lora_files.names import module_lookup
from training.networks.lora import ADAPTER

PARTS = ("lora_down.weight", "lora_up.weight", "alpha")


@dataclass
class ModuleLoRA:
    """One module's LoRA as read from the file."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class ImportReport:
    modules: int = 0
    per_component: dict[str, int] = field(default_factory=dict)
    injected: list[str] = field(default_factory=list)       # components that got a new adapter
    conventions: set[str] = field(default_factory=set)      # "diffusers" / "sgm" UNet naming seen
    missing_alpha: int = 0                                  # modules whose alpha defaulted to r
    untouched: list[str] = field(default_factory=list)      # existing adapter layers the file did not cover


def read_kohya(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and ``__metadata__`` of a ``.safetensors`` LoRA."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot read LoRA file {path}: {exc}") from exc


def group_modules(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, ModuleLoRA], int]:
    """``{module name: ModuleLoRA}`` and the number of modules without alpha (alpha := r, kohya's rule)."""
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in state_dict.items():
        name, _, part = key.partition(".")
        if part not in PARTS:
            raise UserError(f"unsupported key {key!r} in LoRA file (only plain kohya LoRA is supported)")
        parts[name][part] = tensor
    modules, missing = {}, 0
    for name, p in parts.items():
        if "lora_down.weight" not in p or "lora_up.weight" not in p:
            raise UserError(f"LoRA module {name!r} lacks lora_down or lora_up")
        down = p["lora_down.weight"]
        alpha = float(p["alpha"]) if "alpha" in p else float(down.shape[0])
        missing += "alpha" not in p
        modules[name] = ModuleLoRA(down, p["lora_up.weight"], alpha)
    return modules, missing


def _resolve(modules: dict[str, ModuleLoRA], table: dict[str, tuple[int | str, str]]
             ) -> dict[int | str, dict[str, ModuleLoRA]]:
    unknown = [n for n in modules if n not in table]
    if unknown:
        raise UserError(f"{len(unknown)} LoRA module name(s) match no module of this base model, e.g. "
                        f"{', '.join(sorted(unknown)[:5])}; is the LoRA for a different model family?")
    per: dict[int | str, dict[str, ModuleLoRA]] = defaultdict(dict)
    for name, mod in modules.items():
        component, path = table[name]
        if path in per[component]:
            raise UserError(f"LoRA file has two entries for module {path!r} (mixed naming conventions?)")
        per[component][path] = mod
    return per


def _lora_config(mods: dict[str, ModuleLoRA]) -> Any:
    """peft config targeting exactly these paths; per-module r/alpha beyond the most common go to the patterns."""
    import re

    from peft import LoraConfig

    r = Counter(m.rank for m in mods.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in mods.values()).most_common(1)[0][0]
    # peft matches pattern keys as regexes against the module path's tail: escape the dots of full paths.
    rank_pattern = {re.escape(p): m.rank for p, m in mods.items() if m.rank != r}
    alpha_pattern = {re.escape(p): m.alpha for p, m in mods.items() if m.alpha != alpha}
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(mods), rank_pattern=rank_pattern,
                      alpha_pattern=alpha_pattern, use_rslora=False, init_lora_weights=True)


def _has_adapter(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) and ADAPTER in m.lora_A for m in model.modules())


def _copy_into(layer: Any, path: str, mod: ModuleLoRA) -> None:
    """Copy one module's tensors into an existing peft layer; the file's alpha/r becomes the layer's scale."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer) or ADAPTER not in layer.lora_A:
        raise UserError(f"module {path!r} carries no LoRA adapter in the model, but the file has one for it")
    if layer.r[ADAPTER] != mod.rank:
        raise UserError(f"rank mismatch on {path!r}: model r={layer.r[ADAPTER]}, file r={mod.rank}")
    a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    if tuple(a.shape) != tuple(mod.down.shape) or tuple(b.shape) != tuple(mod.up.shape):
        raise UserError(f"shape mismatch on {path!r}: model {tuple(a.shape)}/{tuple(b.shape)}, "
                        f"file {tuple(mod.down.shape)}/{tuple(mod.up.shape)}")
    with torch.no_grad():
        a.copy_(mod.down.to(a.device, torch.float32))
        b.copy_(mod.up.to(b.device, torch.float32))
    layer.lora_alpha[ADAPTER] = mod.alpha
    layer.scaling[ADAPTER] = mod.alpha / mod.rank


def _load_component(model: nn.Module, mods: dict[str, ModuleLoRA], report: ImportReport, label: str) -> None:
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if not _has_adapter(model):
        inject_adapter_in_model(_lora_config(mods), model, adapter_name=ADAPTER)
        report.injected.append(label)
    for path, mod in mods.items():
        _copy_into(model.get_submodule(path), path, mod)
    covered = set(mods)
    report.untouched += [f"{label}:{p}" for p, m in model.named_modules()
                         if isinstance(m, LoraLayer) and ADAPTER in m.lora_A and p not in covered]


def load_kohya_into_peft(path_or_sd: str | Path | dict[str, torch.Tensor], unet: nn.Module | None,
                         text_encoders: list[nn.Module], family: Any) -> ImportReport:
    """Load a kohya LoRA into peft adapters (adapter "default") on ``unet`` and ``text_encoders``.

    Models without an adapter get one injected with the file's ranks and alphas (rank_pattern/alpha_pattern);
    models that already have one (resume) get the tensors copied in after a rank check. lora_A <- lora_down,
    lora_B <- lora_up, kept in fp32.
    """
    state_dict = path_or_sd if isinstance(path_or_sd, dict) else read_kohya(path_or_sd)[0]
    modules, missing = group_modules(state_dict)
    table = module_lookup(unet, text_encoders, family)
    per = _resolve(modules, table)
    report = ImportReport(modules=len(modules), missing_alpha=missing)
    report.conventions = {"sgm" if "_input_blocks_" in n or "_middle_block_" in n or "_output_blocks_" in n
                          else "diffusers" for n in modules if n.startswith("lora_unet_")}
    for component, mods in per.items():
        model = unet if component == "unet" else text_encoders[int(component)]
        label = "unet" if component == "unet" else f"text_encoder_{component}"
        _load_component(model, mods, report, label)
        report.per_component[label] = len(mods)
    return report
