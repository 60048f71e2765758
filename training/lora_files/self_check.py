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
from training.lora_files.export import HASH_KEY, data_region_hash
from training.lora_files.importer import PARTS
from training.lora_files.names import base_layer, canonical_name, module_lookup, uses_sgm_names
from training.networks.lora import ADAPTER

KEY_RE = re.compile(r"^(lora_unet|lora_te|lora_te1|lora_te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
MAX_HEADER = 100 * 1024 * 1024
JSON_OBJECTS = ("ss_tag_frequency", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_bucket_info", "ss_network_args")
SGM_MARKERS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
OPENCLIP_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


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


def _check_metadata_format(meta: dict[str, Any], report: SelfCheck) -> None:
    """String values, JSON where readers JSON-parse."""
    for key, value in meta.items():
        if not isinstance(value, str):
            report.problems.append(f"metadata {key!r} is not a string")
    for key in (*JSON_OBJECTS, "ss_datasets"):
        if not isinstance(meta.get(key), str):
            continue
        try:
            parsed = json.loads(meta[key])
        except ValueError:
            report.problems.append(f"metadata {key!r} is not valid JSON")
            continue
        want = list if key == "ss_datasets" else dict
        if not isinstance(parsed, want):
            report.problems.append(f"metadata {key!r} must be a JSON {want.__name__}")
    if isinstance(meta.get("ss_training_started_at"), str):
        try:
            float(meta["ss_training_started_at"])
        except ValueError:
            report.problems.append("metadata 'ss_training_started_at' is not a number")


def _check_keys(header: dict[str, Any], family: Any, report: SelfCheck) -> dict[str, dict[str, str]]:
    """Dtypes, key syntax, prefixes, three keys per module. Returns {module: {part: dtype}}."""
    allowed = {"lora_unet", *family.te_prefixes}
    modules: dict[str, dict[str, str]] = defaultdict(dict)
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not KEY_RE.match(key):
            report.problems.append(f"key {key!r} is not a kohya LoRA key")
            continue
        name, _, part = key.partition(".")
        prefix = KEY_RE.match(key).group(1)
        if prefix not in allowed:
            report.problems.append(f"key {key!r}: prefix {prefix!r} not used for {family.name}")
        dtype = info.get("dtype")
        if part != "alpha" and dtype != "F16":
            report.problems.append(f"key {key!r}: dtype {dtype}, policy is F16")
        elif part == "alpha" and dtype not in ("F16", "F32"):
            report.problems.append(f"key {key!r}: alpha dtype {dtype}, expected F16 or F32")
        modules[name][part] = dtype
    for name, parts in modules.items():
        missing = [p for p in PARTS if p not in parts]
        if missing:
            report.problems.append(f"module {name!r} lacks {', '.join(missing)}")
    return modules


def _check_names(names: list[str], table: dict[str, tuple[int | str, str]], family: Any, models: dict,
                 n_te: int, report: SelfCheck) -> tuple[dict[str, tuple[int | str, str]], set[str]]:
    """Every name resolves, in the family's canonical convention, TE names with text_model_.

    Returns the resolved names (canonical or not, so shapes can still be checked) and the canonical ones.
    """
    resolved, canonical = {}, set()
    sgm = [n for n in names if n.startswith(SGM_MARKERS)]
    if sgm and len(sgm) < sum(n.startswith("lora_unet_") for n in names):
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


def _check_shapes(name: str, target: nn.Module, t: dict[str, torch.Tensor], report: SelfCheck) -> bool:
    """Down/up shapes against the target layer's in/out/kernel."""
    layer = base_layer(target)
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    if isinstance(layer, nn.Conv2d):
        fan_in, out, kernel, ndim = layer.in_channels // layer.groups, layer.out_channels, tuple(layer.kernel_size), 4
    elif isinstance(layer, nn.Linear):
        fan_in, out, kernel, ndim = layer.in_features, layer.out_features, (), 2
    else:
        report.problems.append(f"module {name!r}: target is {type(layer).__name__}, not Linear/Conv2d")
        return False
    r = down.shape[0] if down.ndim else 0
    bad = down.ndim != ndim or up.ndim != ndim or up.shape[1] != r or down.shape[1] != fan_in or up.shape[0] != out
    bad = bad or not 1 <= r <= min(out, fan_in * math.prod(kernel)) or tuple(down.shape[2:]) != kernel
    bad = bad or tuple(up.shape[2:]) != ((1, 1) if ndim == 4 else ())
    if bad:
        report.problems.append(f"module {name!r}: shapes down{list(down.shape)} up{list(up.shape)} do not fit "
                               f"{type(layer).__name__}(in={fan_in}, out={out}, kernel={kernel})")
    return not bad


def _check_values(name: str, target: nn.Module, t: dict[str, torch.Tensor], report: SelfCheck) -> None:
    """Finite tensors, alpha 0-dim > 0 and equal to the model's own scale when it has an adapter."""
    for part, tensor in t.items():
        if not bool(torch.isfinite(tensor.float()).all()):
            report.problems.append(f"module {name!r}: {part} has NaN/Inf values")
    alpha = t["alpha"]
    if alpha.ndim != 0 or not math.isfinite(float(alpha)) or float(alpha) <= 0:
        report.problems.append(f"module {name!r}: alpha must be a finite 0-dim value > 0, got {alpha.tolist()}")
        return
    scaling = getattr(target, "scaling", {}).get(ADAPTER) if hasattr(target, "scaling") else None
    rank = t["lora_down.weight"].shape[0]
    if scaling is not None and not math.isclose(float(alpha) / rank, scaling, rel_tol=1e-3):
        report.problems.append(f"module {name!r}: alpha/r = {float(alpha) / rank:g}, model scale is {scaling:g}")
    if not bool(t["lora_up.weight"].any()):
        report.warnings.append(f"module {name!r}: lora_up is all zero (untrained)")


def _check_metadata_family(meta: dict[str, str], family: Any, ranks: list[int], alphas: list[float],
                           raw: bytes, report: SelfCheck) -> None:
    """Family markers A1111 filters on, network facts, sshs hash, modelspec architecture."""
    expect = {"ss_v2": str(bool(family.v2)), "ss_base_model_version": family.base_model_version,
              "ss_network_module": "networks.lora"}
    for key, value in expect.items():
        if meta.get(key) != value:
            report.problems.append(f"metadata {key!r} is {meta.get(key)!r}, expected {value!r}")
    for key, values in (("ss_network_dim", ranks), ("ss_network_alpha", alphas)):
        common = Counter(values).most_common(1)[0][0] if values else None
        try:
            ok = common is None or math.isclose(float(meta.get(key, "nan")), common, rel_tol=1e-3)
        except ValueError:
            ok = False
        if not ok:
            report.problems.append(f"metadata {key!r} is {meta.get(key)!r}, most common in the file is {common:g}")
    if HASH_KEY in meta and meta[HASH_KEY] != data_region_hash(raw):
        report.problems.append(f"metadata {HASH_KEY!r} does not match the file's data region")
    arch = meta.get("modelspec.architecture")
    if arch is not None and arch != f"{family.modelspec_architecture}/lora":
        report.problems.append(f"metadata 'modelspec.architecture' is {arch!r}, expected "
                               f"'{family.modelspec_architecture}/lora'")


def verify_lora(path: str | Path, family: Any, unet: nn.Module | None, text_encoders: list[nn.Module]
                ) -> SelfCheck:
    """Check an exported LoRA file against the base model; ``report.ok`` only when every rule holds."""
    from safetensors import safe_open

    report = SelfCheck()
    parsed = _read_header(Path(path), report)
    if parsed is None:
        return report
    header, raw = parsed
    meta = header.get("__metadata__") or {}
    _check_metadata_format(meta, report)
    modules = _check_keys(header, family, report)
    names = sorted(modules)
    models: dict[int | str, nn.Module | None] = {"unet": unet, **dict(enumerate(text_encoders))}
    resolved, canonical = _check_names(names, module_lookup(unet, text_encoders, family), family, models,
                            len(text_encoders), report)
    _check_openclip(names, family, report)
    ranks, alphas, matched = [], [], []
    try:
        fh = safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:  # safetensors' own error types: a header that is JSON but not a tensor table
        report.problems.append(f"the tensors cannot be read: {str(err).splitlines()[0][:200]}")
        return report
    with fh:
        for name in names:
            t = {p: fh.get_tensor(f"{name}.{p}") for p in PARTS if p in modules[name]}
            if name not in resolved or len(t) != len(PARTS):
                continue
            component, mpath = resolved[name]
            target = models[component].get_submodule(mpath)  # type: ignore[union-attr]
            before = len(report.problems)
            if _check_shapes(name, target, t, report):
                _check_values(name, target, t, report)
                ranks.append(int(t["lora_down.weight"].shape[0]))
                alphas.append(float(t["alpha"]))
            if len(report.problems) == before and name in canonical:
                matched.append(name)
    report.count_modules(names, matched)
    _check_metadata_family(meta, family, ranks, alphas, raw, report)
    return report
