"""kohya-format LoRA -> peft adapter: continue training from a LoRA (``network_weights``) or load one to evaluate.

Module names are resolved by lookup in a table built from the real models (both UNet conventions, both TE forms,
``lora_te``/``lora_te1``), never by guessing where the ``_`` were dots. An unknown name is an error.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.contract.errors import UserError
from training.lora_files.export import group_parts
from training.lora_files.kinds import DORA, KNOWN_PARTS, adapter_layers, layout_for_parts, network_kind
from training.lora_files.layouts import Layout, Tensors, module_kind
from training.lora_files.names import module_lookup

# Parts of other LyCORIS/kohya types, named so the error says what the file is.
FOREIGN_PARTS = {"lora_mid.weight": "Tucker LoCon (lora_mid); LoCon here trains without use_tucker",
                 "oft_blocks": "OFT", "oft_diag": "OFT", "diff": "a full-weight difference",
                 "diff_b": "a full-weight difference", "w_norm": "norm-layer training", "b_norm": "norm-layer training",
                 "on_input": "IA3", "weight": "IA3", "a1.weight": "GLoRA", "scale": "a scaled network"}


@dataclass
class ModuleLoRA:
    """One module as read from the file: its parts and its type's layout."""

    parts: Tensors
    layout: Layout

    @property
    def rank(self) -> int:
        return self.layout.rank(self.parts) or 1

    @property
    def alpha(self) -> float:
        return float(self.parts["alpha"]) if "alpha" in self.parts else float(self.rank)


@dataclass
class ImportReport:
    modules: int = 0
    per_component: dict[str, int] = field(default_factory=dict)
    injected: list[str] = field(default_factory=list)       # components that got a new adapter
    conventions: set[str] = field(default_factory=set)      # "diffusers" / "sgm" UNet naming seen
    missing_alpha: int = 0                                  # modules whose alpha defaulted to r
    untouched: list[str] = field(default_factory=list)      # existing adapter layers the file did not cover
    kind: str = ""                                          # LoRA, LoCon, LoHa, LoKr, LoCon+DoRA
    per_kind: dict[str, int] = field(default_factory=dict)  # loaded modules per target kind: linear / conv


def read_kohya(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and ``__metadata__`` of a ``.safetensors`` LoRA."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot read LoRA file {path}: {exc}") from exc


def _foreign(name: str, part: str) -> UserError:
    what = FOREIGN_PARTS.get(part) or "a tensor no LoRA/LoCon/LoHa/LoKr/DoRA layout has"
    return UserError(f"unsupported key {name + '.' + part!r} in the LoRA file: {what}")


def group_modules(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, ModuleLoRA], int]:
    """``{module name: ModuleLoRA}`` and the number of modules without alpha (alpha := r, kohya's rule).

    Each module's type comes from its keys (lora_down/lora_up, hada_*, lokr_*); one file holds one type."""
    modules, missing = {}, 0
    for name, parts in group_parts(state_dict).items():
        unknown = sorted(set(parts) - KNOWN_PARTS)
        if unknown:
            raise _foreign(name, unknown[0])
        layout = layout_for_parts(parts)
        if layout is None:
            raise UserError(f"LoRA module {name!r} has no complete tensors of one type: {sorted(parts)}")
        lacking = [p for p in layout.missing(parts) if p != "alpha"]
        if lacking:
            raise UserError(f"LoRA module {name!r} lacks {', '.join(lacking)}")
        missing += "alpha" not in parts
        modules[name] = ModuleLoRA(parts, layout)
    algos = {m.layout.algo for m in modules.values()}
    if len(algos) > 1:
        raise UserError(f"the LoRA file mixes module types ({', '.join(sorted(algos))}); one file holds one type")
    with_dora = sum(DORA in m.parts for m in modules.values())
    if with_dora not in (0, len(modules)):
        raise UserError(f"dora_scale is on {with_dora} of {len(modules)} modules; a DoRA file has it on every module")
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


def _peft_config(mods: dict[str, ModuleLoRA]) -> Any:
    """peft config of the file's type targeting exactly these paths; ranks beyond the most common go to
    rank_pattern. Scales are set per layer when the tensors are copied in."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    algo = next(iter(mods.values())).layout.algo
    r = Counter(m.rank for m in mods.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in mods.values()).most_common(1)[0][0]
    # peft matches pattern keys as regexes against the module path's tail: escape the dots of full paths.
    rank_pattern = {re.escape(p): m.rank for p, m in mods.items() if m.rank != r}
    alpha_pattern = {re.escape(p): m.alpha for p, m in mods.items() if m.alpha != alpha}
    common = {"r": r, "target_modules": sorted(mods), "rank_pattern": rank_pattern}
    has = {part for m in mods.values() for part in m.parts}
    if algo == "lora":
        return LoraConfig(lora_alpha=alpha, alpha_pattern=alpha_pattern, use_rslora=False, init_lora_weights=True,
                          use_dora=DORA in has, **common)
    if algo == "loha":
        return LoHaConfig(alpha=alpha, alpha_pattern=alpha_pattern, use_effective_conv2d="hada_t1" in has, **common)
    return LoKrConfig(alpha=alpha, alpha_pattern=alpha_pattern, use_effective_conv2d="lokr_t2" in has,
                      decompose_both="lokr_w1_a" in has, **common)


def _copy_into(layer: Any, path: str, mod: ModuleLoRA, fresh: bool) -> None:
    """Copy one module's tensors into its peft layer, so the layer's delta is the file's."""
    if not mod.layout.is_layer(layer):
        raise UserError(f"module {path!r} carries no {network_kind({mod.layout.algo}, False, False)} adapter in the "
                        f"model, but the file has one for it")
    problem = mod.layout.shape_problem(mod.parts, layer)
    if problem is not None:
        raise UserError(f"shape mismatch on {path!r}: {problem}")
    mod.layout.load(layer, path, mod.parts, fresh=fresh)


def _load_component(model: nn.Module, mods: dict[str, ModuleLoRA], report: ImportReport, label: str) -> None:
    from peft import inject_adapter_in_model

    fresh = not adapter_layers(model)
    if fresh:
        inject_adapter_in_model(_peft_config(mods), model, adapter_name="default")
        report.injected.append(label)
    for path, mod in mods.items():
        layer = model.get_submodule(path)
        _copy_into(layer, path, mod, fresh)
        kind = module_kind(layer)
        report.per_kind[kind] = report.per_kind.get(kind, 0) + 1
    covered = set(mods)
    report.untouched += [f"{label}:{p}" for p, _, _ in adapter_layers(model) if p not in covered]


def load_kohya_into_peft(path_or_sd: str | Path | dict[str, torch.Tensor], unet: nn.Module | None,
                         text_encoders: list[nn.Module], family: Any) -> ImportReport:
    """Load a kohya/LyCORIS LoRA (LoRA, LoCon, DoRA, LoHa or LoKr) into peft adapters (adapter "default") on
    ``unet`` and ``text_encoders``, so that each layer's delta equals what loaders compute from the file.

    Models without an adapter get one of the file's type injected (ranks via rank_pattern; LoHa/LoKr factors laid
    out in the file's shapes); models that already have one (resume) get the tensors copied in after a type, rank
    and shape check. Tensors are kept in fp32.
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
    report.kind = _file_kind(modules)
    return report


def _file_kind(modules: dict[str, ModuleLoRA]) -> str:
    algos = {m.layout.algo for m in modules.values()}
    conv3x3 = any(m.parts[p].ndim == 4 and m.parts[p].shape[2:] != (1, 1) for m in modules.values()
                  for p in ("lora_down.weight",) if p in m.parts)
    return network_kind(algos, any(DORA in m.parts for m in modules.values()), conv3x3)


def file_module_ranks(path: str | Path, unet: nn.Module | None, text_encoders: list[nn.Module],
                      family: Any) -> dict[int | str, dict[str, tuple[int, float]]]:
    """Each module's (rank, alpha) in a LoRA/LoCon file, by component ("unet" or the text-encoder index) and module
    path: sd-scripts' dim_from_weights, so a network of the file's ranks can be built before its tensors load."""
    modules, _ = group_modules(read_kohya(path)[0])
    algos = {m.layout.algo for m in modules.values()}
    if algos - {"lora"} or any(DORA in m.parts for m in modules.values()):
        raise UserError(f"dim_from_weights: {Path(path).name} is a {_file_kind(modules)} file; networks.lora reads "
                        f"ranks from LoRA and LoCon files only")
    per = _resolve(modules, module_lookup(unet, text_encoders, family))
    return {component: {p: (m.rank, m.alpha) for p, m in mods.items()} for component, mods in per.items()}
