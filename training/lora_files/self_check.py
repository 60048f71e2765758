"""Export self-check: is this file a LoRA every loader (A1111, Forge, ComfyUI, diffusers) applies in full?

Runs against the base model the LoRA was trained on (peft-wrapped or bare, real or on the meta device: only module
types and shapes are read). Each failed rule becomes one readable line in ``problems``; the result is the torch-free
record ``training.contract.lora_check.SelfCheck``, which a checkpoint event carries to the UI.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.contract.lora_check import SelfCheck
from training.lora_files.kinds import DORA, KNOWN_PARTS, layout_for_layer, layout_for_parts
from training.lora_files.layouts import Layout, Tensors, base_layer, layer_geometry, module_kind
from training.lora_files.names import canonical_name, module_lookup, uses_sgm_names
from training.lora_files.self_check_meta import FileFacts, check_metadata_family, check_metadata_format

_PART_RE = "|".join(re.escape(p) for p in sorted(KNOWN_PARTS, key=len, reverse=True))
KEY_RE = re.compile(rf"^(lora_unet|lora_te|lora_te1|lora_te2)_[a-z0-9_]+\.({_PART_RE})$")
MAX_HEADER = 100 * 1024 * 1024
SGM_MARKERS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
               "lora_unet_time_embed_", "lora_unet_label_emb_", "lora_unet_out_")
DIFFUSERS_MARKERS = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_", "lora_unet_conv_in",
                     "lora_unet_conv_out", "lora_unet_time_embedding_", "lora_unet_add_embedding_")
OPENCLIP_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
# Largest relative (Frobenius) error of a module's delta rebuilt from the file against the model's own, per file
# dtype: rounding the factors to 16 bits moves the product by about one unit in the last place of each factor.
DELTA_TOLERANCE = {"F32": 1e-4, "F16": 5e-3, "BF16": 4e-2}
TORCH_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def _read_header(path: Path, report: SelfCheck) -> tuple[dict[str, Any], bytes] | None:
    """Parse the header by hand (length bound, duplicate keys) and return it with the raw file."""
    if path.suffix != ".safetensors":
        report.problems.append(f"file extension is {path.suffix!r}, expected '.safetensors'")
    raw = path.read_bytes()
    if len(raw) < 8:
        report.problems.append("file too short for a safetensors header")
        return None
    (n,) = struct.unpack("<Q", raw[:8])
    if n >= MAX_HEADER or 8 + n > len(raw):
        report.problems.append(f"header length {n} is invalid")
        return None
    dupes: list[str] = []

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dupes.extend(k for k, c in Counter(keys).items() if c > 1)
        return dict(pairs)

    try:
        header = json.loads(raw[8:8 + n], object_pairs_hook=no_dupes)
    except ValueError as exc:
        report.problems.append(f"header does not parse as JSON: {exc}")
        return None
    if dupes:
        report.problems.append(f"duplicate header keys: {dupes[:5]}")
    return header, raw


def _check_keys(header: dict[str, Any], family: Any, report: SelfCheck) -> dict[str, dict[str, str]]:
    """Dtypes, key syntax, prefixes, every part a module's type needs. Returns {module: {part: dtype}}."""
    allowed = {"lora_unet", *family.te_prefixes}
    modules: dict[str, dict[str, str]] = defaultdict(dict)
    for key, info in header.items():
        if key == "__metadata__":
            continue
        match = KEY_RE.match(key)
        if not match:
            report.problems.append(f"key {key!r} is not a kohya LoRA key")
            continue
        name, _, part = key.partition(".")
        prefix = match.group(1)
        if prefix not in allowed:
            report.problems.append(f"key {key!r}: prefix {prefix!r} not used for {family.name}")
        dtype = info.get("dtype")
        if part != "alpha" and dtype != "F16":
            report.problems.append(f"key {key!r}: dtype {dtype}, policy is F16")
        elif part == "alpha" and dtype not in ("F16", "F32"):
            report.problems.append(f"key {key!r}: alpha dtype {dtype}, expected F16 or F32")
        modules[name][part] = dtype
    for name, parts in modules.items():
        layout = layout_for_parts(parts)
        if layout is None:
            report.problems.append(f"module {name!r} has keys of no single network type: {sorted(parts)}")
            continue
        missing = layout.missing(dict.fromkeys(parts, torch.zeros(0)))
        if missing:
            report.problems.append(f"module {name!r} lacks {', '.join(missing)}")
    return modules


def _check_names(names: list[str], table: dict[str, tuple[int | str, str]], family: Any, models: dict,
                 n_te: int, report: SelfCheck) -> tuple[dict[str, tuple[int | str, str]], set[str]]:
    """Every name resolves, in the family's canonical convention, TE names with text_model_.

    Returns the resolved names (canonical or not, so shapes can still be checked) and the canonical ones.
    """
    resolved, canonical = {}, set()
    if any(n.startswith(SGM_MARKERS) for n in names) and any(n.startswith(DIFFUSERS_MARKERS) for n in names):
        report.problems.append("UNet names mix the diffusers and the SGM convention")
    for name in names:
        if name not in table:
            report.problems.append(f"module {name!r} matches no module of the {family.name} base model")
            continue
        component, path = table[name]
        resolved[name] = table[name]
        canon = canonical_name(component, path, family, models[component], n_te)
        if name == canon:
            canonical.add(name)
        elif component != "unet" and "_text_model_" not in name:
            report.problems.append(f"module {name!r}: TE name lacks text_model_ (A1111/ComfyUI skip it), "
                                   f"expected {canon!r}")
        else:
            style = "SGM" if uses_sgm_names(family) else "diffusers"
            report.problems.append(f"module {name!r} is not in {style} naming for {family.name}: expected {canon!r}")
    return resolved, canonical


def _check_openclip(names: list[str], family: Any, report: SelfCheck) -> None:
    """A1111 applies OpenCLIP attention LoRA only when q, k, v and out_proj are all present per layer."""
    prefixes = {"lora_te"} if family.v2 else {"lora_te2"} if uses_sgm_names(family) else set()
    layers: dict[str, set[str]] = defaultdict(set)
    for name in names:
        m = re.match(r"^(lora_te\d?)_(?:text_model_)?encoder_layers_(\d+)_self_attn_(\w+)$", name)
        if m and m.group(1) in prefixes:
            layers[f"{m.group(1)} layer {m.group(2)}"].add(m.group(3))
    for layer, leaves in sorted(layers.items()):
        if set(OPENCLIP_ATTN) - leaves:
            report.problems.append(f"{layer}: attention LoRA has {sorted(leaves)}, needs all of q/k/v/out_proj")


def _check_shapes(name: str, target: nn.Module, t: Tensors, report: SelfCheck) -> bool:
    """The module's tensors against the target layer's in/out/kernel, by the rules of the module's type."""
    layout = layout_for_parts(t)
    if layer_geometry(target) is None:
        report.problems.append(f"module {name!r}: target is {type(base_layer(target)).__name__}, not Linear/Conv2d")
        return False
    problem = None if layout is None else layout.shape_problem(t, target)
    if problem is not None:
        report.problems.append(f"module {name!r}: {problem}")
    return layout is not None and problem is None


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(torch.linalg.norm(want))
    return float(torch.linalg.norm(got - want)) / scale if scale else float(torch.linalg.norm(got))


def _check_against_model(name: str, target: nn.Module, layout: Layout, t: Tensors, tolerance: float,
                         report: SelfCheck) -> None:
    """The delta every loader rebuilds from the file equals the delta the model's adapter applies.

    DoRA compares its two halves apart (the low-rank change, then the magnitudes): in a 16-bit file the rounded
    magnitude alone moves the merged weight by more than a small trained change, which would hide a wrong factor."""
    model_layout = layout_for_layer(target)
    if model_layout is None:
        return  # a bare base model: only names and shapes can be checked
    if model_layout is not layout:
        report.problems.append(f"module {name!r}: the file's module is {layout.algo}, the model's adapter is "
                               f"{model_layout.algo}")
        return
    model_dora = bool(getattr(target, "use_dora", {}).get("default", False))
    if model_dora != (DORA in t):
        report.problems.append(f"module {name!r}: the model's adapter is {'DoRA' if model_dora else 'plain LoRA'}, "
                               f"but the file {'lacks' if model_dora else 'has'} dora_scale")
        return
    weight = base_layer(target).weight
    if weight.is_meta:
        return
    # On the layer's own device, without autograd: the adapter's parameters are trainable.
    with torch.no_grad():
        on_device = {k: v.to(weight.device) for k, v in t.items() if k != DORA}
        adapter = target.get_delta_weight("default").float()
        error = _relative_error(layout.file_delta(on_device, weight), adapter)
        if DORA in t:
            magnitude = target.lora_magnitude_vector["default"].weight.float()
            error = max(error, _relative_error(t[DORA].to(weight.device).float().flatten(), magnitude.flatten()))
    # The adapter's own precision bounds the agreement too (bf16 adapters under full_bf16 training).
    tolerance = max(tolerance, TORCH_TOLERANCE.get(_adapter_dtype(target), 1e-4))
    if not error <= tolerance:
        report.problems.append(f"module {name!r}: the delta rebuilt from the file differs from the model's adapter "
                               f"by {error:.2%} (allowed {tolerance:.2%})")


def _adapter_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype the adapter's own tensors are kept in (the first parameter that is not the base layer's)."""
    base = {id(p) for p in base_layer(layer).parameters()}
    return next((p.dtype for p in layer.parameters() if id(p) not in base), torch.float32)


def _check_values(name: str, target: nn.Module, t: Tensors, report: SelfCheck, tolerance: float = 1e-4) -> None:
    """Finite tensors; alpha a 0-dim value > 0, equal to the model's own scale; the delta equal to the model's."""
    layout = layout_for_parts(t)
    for part, tensor in t.items():
        if not bool(torch.isfinite(tensor.float()).all()):
            report.problems.append(f"module {name!r}: {part} has NaN/Inf values")
            return
    alpha = t["alpha"]
    if alpha.ndim != 0 or not math.isfinite(float(alpha)) or float(alpha) <= 0:
        report.problems.append(f"module {name!r}: alpha must be a finite 0-dim value > 0, got {alpha.tolist()}")
        return
    rank = layout.rank(t)  # type: ignore[union-attr]
    scaling = getattr(target, "scaling", {}).get("default") if layout_for_layer(target) is layout else None
    if rank is not None and scaling is not None and not math.isclose(float(alpha) / rank, scaling, rel_tol=1e-3):
        report.problems.append(f"module {name!r}: alpha/r = {float(alpha) / rank:g}, model scale is {scaling:g}")
        return
    zero = _untrained_part(layout, t)  # type: ignore[arg-type]
    if zero:
        report.warnings.append(f"module {name!r}: {zero.removesuffix('.weight')} is all zero (untrained)")
    _check_against_model(name, target, layout, t, tolerance, report)  # type: ignore[arg-type]


def _untrained_part(layout: Layout, t: Tensors) -> str | None:
    """The part whose zeros make the module's change zero, as peft initialises it (lora_up, hada_w2_b, lokr_w1)."""
    for part in {"lora": ("lora_up.weight",), "loha": ("hada_w2_b",), "lokr": ("lokr_w1", "lokr_w1_a")}[layout.algo]:
        if part in t and not bool(t[part].any()):
            return part
    return None


def verify_lora(path: str | Path, family: Any, unet: nn.Module | None, text_encoders: list[nn.Module]
                ) -> SelfCheck:
    """Check an exported LoRA file against the base model; ``report.ok`` only when every rule holds.

    Every module's tensors are checked by its type's rules (LoRA/LoCon/DoRA, LoHa, LoKr): names, shapes, alpha
    and, against a model carrying the adapters, the delta rebuilt from the file against the adapter's own."""
    from safetensors import safe_open

    report = SelfCheck()
    parsed = _read_header(Path(path), report)
    if parsed is None:
        return report
    header, raw = parsed
    meta = header.get("__metadata__") or {}
    check_metadata_format(meta, report)
    modules = _check_keys(header, family, report)
    names = sorted(modules)
    models: dict[int | str, nn.Module | None] = {"unet": unet, **dict(enumerate(text_encoders))}
    resolved, canonical = _check_names(names, module_lookup(unet, text_encoders, family), family, models,
                            len(text_encoders), report)
    _check_openclip(names, family, report)
    facts, matched, kinds = FileFacts(), [], Counter()
    try:
        fh = safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:  # safetensors' own error types: a header that is JSON but not a tensor table
        report.problems.append(f"the tensors cannot be read: {str(err).splitlines()[0][:200]}")
        return report
    with fh:
        for name in names:
            layout = layout_for_parts(modules[name])
            if name not in resolved or layout is None or layout.missing(dict.fromkeys(modules[name], 0)):
                continue
            t = {p: fh.get_tensor(f"{name}.{p}") for p in modules[name]}
            component, mpath = resolved[name]
            target = models[component].get_submodule(mpath)  # type: ignore[union-attr]
            before = len(report.problems)
            if _check_shapes(name, target, t, report):
                tolerance = max(DELTA_TOLERANCE.get(dtype, 1e-4) for dtype in modules[name].values())
                _check_values(name, target, t, report, tolerance)
                facts.add(layout, t)
            if len(report.problems) == before and name in canonical:
                matched.append(name)
                kinds[module_kind(target)] += 1
    report.count_modules(names, matched)
    report.kinds = {kind: kinds[kind] for kind in ("linear", "conv") if kinds[kind]}
    check_metadata_family(meta, family, facts, raw, report)
    return report
