"""The Model tab's Network type choice as pure functions: form values -> what the section shows, and a choice ->
the config fields it writes.

The config stays the one source: ``network_module``, ``network_args``, ``conv_dim`` and ``conv_alpha`` are what
Save TOML, Start and a kohya user's file hold. The type, module preset and conv fields shown are derived from them
(``network_view``) on every change, so a loaded kohya TOML with ``lycoris.kohya`` + ``algo=loha`` shows LoHa; a
choice made in the section rewrites those four fields (``choose_type``, ``choose_preset``) and nothing else.

LoRA and LoCon are written as sd-scripts' own ``networks.lora`` (LoCon = a conv rank on it), the form every WebUI
has read the longest; LoHa, LoKr and DoRA need LyCORIS's ``lycoris.kohya``. A LyCORIS ``algo=locon`` file still
loads and shows as LoCon (or LoRA when its preset has no convolutions), with its preset.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from training.contract.network import (
    BLOCK_LR_ARGS,
    BLOCK_RANK_ARGS,
    KOHYA_LORA,
    KOHYA_LORA_ARGS,
    LORAPLUS_ARGS,
    LYCORIS,
    LYCORIS_PRESETS,
    PRESETS_WITH_CONV,
    NetworkArgsError,
    NetworkSpec,
    parse_network,
    parse_pairs,
    split_args,
)

TYPES = ("LoRA", "LoCon", "LoHa", "LoKr", "DoRA")
TYPE_REASONS = {
    "LoRA": "The classic: low-rank adapters on the attention and feed-forward layers; small files that every WebUI "
            "reads. Good for characters and concepts.",
    "LoCon": "LoCon learns texture and style that attention-only LoRA misses (it also adapts the UNet's 3x3 "
             "convolutions); about 2x the file size.",
    "LoHa": "Hadamard product of two low-rank pairs: more expressive at the same file size; good for styles "
            "(LyCORIS).",
    "LoKr": "Kronecker product: tiny files, fast to train; factor sets the size (LyCORIS).",
    "DoRA": "Learns magnitude and direction apart: detail that plain LoRA misses, ~20% slower (LyCORIS LoCon with "
            "dora_wd).",
}
PRESET_REASONS = {
    "attn-only": "Only the attention projections (q, k, v, out) and the text encoder's attention: the smallest "
                 "file; subjects and faces, little style.",
    "attn-mlp": "Attention and feed-forward layers of the transformer blocks, plus the text encoder's: more "
                "capacity for concepts at a moderate size.",
    "unet-transformer-only": "The UNet's whole transformer blocks and no text encoder: prompts keep their meaning, "
                             "the image side learns.",
    "full": "LyCORIS's default: transformer blocks, resnet 3x3 convolutions, samplers, conv_in/out and time "
            "embedding, plus the text encoder: the most capacity, the largest file.",
}
KOHYA_SET = ("kohya's module set: every Linear and 1x1 conv in the UNet's transformer blocks and the text encoder's "
             "attention and MLP")
LYCORIS_TYPES = {"LoHa": "loha", "LoKr": "lokr", "DoRA": "locon"}
CONV_TYPES = ("LoCon",)  # always with convolutions; the LyCORIS types have them when their preset does
DEFAULT_LYCORIS_PRESET = "full"  # LyCORIS's own default when network_args names no preset
# network_args the section writes itself; any other arg the user typed is kept when it still applies.
WRITTEN_ARGS = ("algo", "preset", "conv_dim", "conv_alpha", "dora_wd")
ONLY_FOR = {"factor": ("LoKr",), "decompose_both": ("LoKr",), "wd_on_output": ("DoRA",),
            # networks.lora's own: per-block ranks (conv ones only with convolutions), per-block rates, LoRA+
            **dict.fromkeys((*BLOCK_RANK_ARGS[:2], *BLOCK_LR_ARGS, *LORAPLUS_ARGS), ("LoRA", "LoCon")),
            **dict.fromkeys(BLOCK_RANK_ARGS[2:], ("LoCon",))}
NETWORK_FIELDS = ("network_module", "network_args", "conv_dim", "conv_alpha")


@dataclass(frozen=True)
class NetworkView:
    """What the Network section shows for the form's values."""

    kind: str | None  # one of TYPES; None while the settings do not parse (their error shows at the field)
    preset: str | None  # the LyCORIS module preset; None for networks.lora (kohya's set)
    has_conv: bool  # whether the conv rank and alpha fields apply
    reason: str  # the type's one-line reason, and the preset's

    @property
    def lycoris(self) -> bool:
        return self.preset is not None


def _number(value: Any, kind: type) -> Any:
    """A form number (a number box's value, or an optional number's text) or None when unset or not a number."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if kind is int and number.is_integer() else number if kind is float else None


def _parsed(values: dict[str, Any]) -> NetworkSpec:
    """The NetworkSpec the form's values make; raises NetworkArgsError naming the module or arg at fault."""
    return parse_network(str(values.get("network_module") or KOHYA_LORA), split_args(values.get("network_args")),
                         _number(values.get("network_dim"), int) or 16,
                         _number(values.get("network_alpha"), float) or 1.0,
                         _number(values.get("conv_dim"), int), _number(values.get("conv_alpha"), float))


def spec_of(values: dict[str, Any]) -> NetworkSpec | None:
    """The NetworkSpec the form's values make; None when they do not parse (network_problem says why)."""
    try:
        return _parsed(values)
    except NetworkArgsError:
        return None


def network_problem(values: dict[str, Any]) -> str | None:
    """Why network_module/network_args do not make a network, in one line; None when they do."""
    try:
        _parsed(values)
    except NetworkArgsError as err:
        return str(err)
    return None


def type_of(spec: NetworkSpec) -> str:
    """The section's type for a spec: DoRA whatever its convolutions, else spec.kind (LoRA, LoCon, LoHa, LoKr)."""
    return "DoRA" if spec.dora_wd else spec.kind


def network_view(values: dict[str, Any]) -> NetworkView:
    try:
        spec = _parsed(values)
    except NetworkArgsError as err:
        return NetworkView(None, None, False, f"⚠ {err}. Fix it under Advanced, or pick a type above.")
    kind = type_of(spec)
    preset = spec.preset if spec.module == LYCORIS else None
    where = f"\n\n**Modules ({preset}):** {PRESET_REASONS[preset]}" if preset else f"\n\n**Modules:** {KOHYA_SET}."
    return NetworkView(kind, preset, spec.has_conv, f"**{kind}:** {TYPE_REASONS[kind]}{where}")


def _kept_args(values: dict[str, Any], kind: str, lycoris: bool) -> list[str]:
    """The user's own network_args that still apply to the new type (dropouts, Tucker, LoKr's factor...)."""
    try:
        pairs = parse_pairs(split_args(values.get("network_args")))
    except NetworkArgsError:
        return []  # the box's text does not parse: the choice starts it afresh
    allowed = None if lycoris else KOHYA_LORA_ARGS
    kept = []
    for key, value in pairs.items():
        if key in WRITTEN_ARGS or kind not in ONLY_FOR.get(key, TYPES):
            continue
        if allowed is not None and key not in allowed:
            continue
        kept.append(f"{key}={value}")
    return kept


def _conv_fields(values: dict[str, Any], with_conv: bool) -> dict[str, Any]:
    """conv_dim/conv_alpha as form text: the ones set (from the fields, else from network_args), else LyCORIS's
    default of the linear rank and alpha; unset for a network without convolutions."""
    if not with_conv:
        return {"conv_dim": "", "conv_alpha": ""}
    spec = spec_of(values)
    dim = spec.conv_dim if spec and spec.conv_dim else _number(values.get("network_dim"), int) or 16
    alpha = spec.conv_alpha if spec and spec.conv_dim else _number(values.get("network_alpha"), float) or 1.0
    return {"conv_dim": str(dim), "conv_alpha": f"{alpha:g}"}


def choose_type(values: dict[str, Any], kind: str, preset: str | None = None) -> dict[str, Any]:
    """The network fields (form values) for a type picked in the section; ``preset`` for the LyCORIS types (else
    the one in force, else LyCORIS's default)."""
    if kind not in TYPES:
        raise ValueError(f"unknown network type {kind!r}")
    kept = _kept_args(values, kind, lycoris=kind in LYCORIS_TYPES)
    if kind not in LYCORIS_TYPES:
        return {"network_module": KOHYA_LORA, "network_args": shlex.join(kept),
                **_conv_fields(values, kind in CONV_TYPES)}
    return _lycoris_fields(values, LYCORIS_TYPES[kind], preset, kept, dora=kind == "DoRA")


def _lycoris_fields(values: dict[str, Any], algo: str, preset: str | None, kept: list[str],
                    dora: bool) -> dict[str, Any]:
    chosen = preset if preset in LYCORIS_PRESETS else network_view(values).preset or DEFAULT_LYCORIS_PRESET
    args = [f"algo={algo}", f"preset={chosen}", *kept] + (["dora_wd=True"] if dora else [])
    return {"network_module": LYCORIS, "network_args": shlex.join(args),
            **_conv_fields(values, chosen in PRESETS_WITH_CONV)}


def choose_preset(values: dict[str, Any], preset: str) -> dict[str, Any]:
    """The network fields for a module preset picked while a LyCORIS network is in force: its algorithm stays (a
    LyCORIS LoCon stays one). {} for networks.lora, which has kohya's set and no preset."""
    spec = spec_of(values)
    if spec is None or spec.module != LYCORIS:
        return {}
    kind = type_of(spec)
    kept = _kept_args(values, kind, lycoris=True)
    algo = "locon" if spec.algo == "lora" else spec.algo  # LyCORIS's two names for one algorithm
    return _lycoris_fields(values, algo, preset, kept, dora=spec.dora_wd)


def module_counts(size: Any) -> str:
    """``264 modules (192 linear, 72 conv)`` from a LoraSize; the split only where the estimate gives it."""
    linear, conv = getattr(size, "linear_modules", None), getattr(size, "conv_modules", None)
    split = f" ({linear:,} linear, {conv:,} conv)" if linear is not None and conv is not None else ""
    return f"{size.modules:,} modules{split}"


def size_line(values: dict[str, Any], family: str | None) -> str:
    """``LoRA file ≈ 37.9 MB · 264 modules (192 linear, 72 conv)`` for the form's settings and the base model's
    family (SD1.5's when it is not known yet, said so); empty while the settings do not make a config."""
    from app.form import values_to_config
    from training.contract.services import FAMILY_LABELS, lora_size, trained_parts

    cfg, _error = values_to_config(values)
    if cfg is None:
        return ""
    known = family in FAMILY_LABELS
    family = family if known else "sd1"
    size = lora_size(cfg, family)
    base = FAMILY_LABELS[family] + ("" if known else ", until the base model is set")
    return (f"**{cfg.network.kind} file ≈ {size.megabytes:.1f} MB** · {module_counts(size)} · {base}, rank "
            f"{cfg.network_dim}, {trained_parts(cfg, family)}, {cfg.save_precision}")
