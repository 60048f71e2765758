"""Which network trains: kohya's ``network_module`` + ``network_args`` strings parsed once into a typed NetworkSpec.

kohya users write ``network_module = "networks.lora"`` (attention LoRA; LoCon with ``conv_dim``) or
``network_module = "lycoris.kohya"`` with ``network_args = ["algo=loha", "preset=full", ...]``. Both spellings land
here; the engine, the metadata, the size estimate and the UI read the NetworkSpec, never the strings. Defaults follow
each module's own: sd-scripts' networks.lora trains conv layers only when ``conv_dim`` is given; LyCORIS's kohya
wrapper defaults to ``algo=lora`` (LoCon) on its ``full`` preset with ``conv_dim``/``conv_alpha`` = the linear
rank/alpha. Torch-free: the UI imports it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from typing import Any, Literal

KOHYA_LORA = "networks.lora"
LYCORIS = "lycoris.kohya"
NETWORK_MODULES = (KOHYA_LORA, LYCORIS)

Algo = Literal["lora", "loha", "lokr"]
# Which modules get adapters. "kohya" is sd-scripts' networks.lora set (every Linear and 1x1 conv inside the UNet's
# transformer blocks, the text encoders' attention and MLP; 3x3 resnet/up/down-sampler convs when conv_dim is set);
# the others are LyCORIS's presets of the same names.
ModulePreset = Literal["kohya", "attn-only", "attn-mlp", "unet-transformer-only", "full"]
LYCORIS_PRESETS: tuple[str, ...] = ("attn-only", "attn-mlp", "unet-transformer-only", "full")
LYCORIS_ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}
UNSUPPORTED_ALGOS = ("ia3", "dylora", "glora", "full", "diag-oft", "boft", "tlora")
PRESETS_WITH_CONV = ("kohya", "full")  # kohya: only with conv_dim

# networks.lora's per-block settings: SD1/SD2 UNets have 25 blocks (IN00-IN11, MID, OUT00-OUT11), SDXL's 23 (its
# time embedding, IN00-IN08, MID00-MID02, OUT00-OUT08, its output layers); training.networks.blocks numbers them.
BLOCK_COUNTS = {"SD1/SD2": 25, "SDXL": 23}
BLOCK_RANK_ARGS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
BLOCK_LR_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")
LR_WEIGHT_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
LORAPLUS_ARGS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")

# network_args each module accepts here (kohya's spelling), and the ones recognised but not built yet.
KOHYA_LORA_ARGS = ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout", *BLOCK_RANK_ARGS, *BLOCK_LR_ARGS,
                   *LORAPLUS_ARGS)
LYCORIS_ARGS = ("algo", "preset", "conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "factor",
                "decompose_both", "use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp", "dora_wd",
                "wd_on_output")
NOT_YET = {
    "use_scalar": "LyCORIS's trainable scalar", "train_norm": "norm-layer training",
    "bypass_mode": "LyCORIS's bypass mode", "rs_lora": "rank-stabilised scaling", "constraint": "weight constraints",
    "rescaled": "rescaled LoHa/LoKr", "full_matrix": "LoKr full matrices", "unbalanced_factorization":
    "unbalanced LoKr factors", "block_size": "block-diagonal OFT",
}


class NetworkArgsError(ValueError):
    """A network_args entry (or network_module) the user must fix; the message names it and what is accepted."""


@dataclass(frozen=True)
class NetworkSpec:
    """The network to train, resolved: every default filled in, every arg checked."""

    module: str = KOHYA_LORA
    algo: Algo = "lora"
    preset: ModulePreset = "kohya"
    conv_dim: int = 0  # 0: no 3x3 conv adapters
    conv_alpha: float = 1.0
    dropout: float = 0.0  # LyCORIS's "dropout" arg; networks.lora uses network_dropout
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    factor: int = -1  # LoKr: -1 splits each dimension as evenly as possible
    decompose_both: bool = False  # LoKr: also factor the smaller Kronecker factor
    use_tucker: bool = False  # Tucker (CP) decomposition of 3x3 conv kernels
    dora_wd: bool = False  # DoRA: learn each output's magnitude apart from its direction
    wd_on_output: bool = True  # DoRA's norm axis, LyCORIS's default
    # networks.lora's per-block ranks and alphas of the UNet (empty: not given); lengths checked against the model's
    # block count when it is known (training.networks.blocks)
    block_dims: tuple[int, ...] = ()
    block_alphas: tuple[float, ...] = ()
    conv_block_dims: tuple[int, ...] = ()
    conv_block_alphas: tuple[float, ...] = ()
    # per-block learning-rate weights as written: a comma list, or (down/up) a preset name with an optional "+number"
    down_lr_weight: str = ""
    mid_lr_weight: str = ""
    up_lr_weight: str = ""
    block_lr_zero_threshold: float = 0.0
    # LoRA+: the up (B) matrices learn at lr x ratio; the per-part ratios win over the common one
    loraplus_lr_ratio: float | None = None
    loraplus_unet_lr_ratio: float | None = None
    loraplus_text_encoder_lr_ratio: float | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # warnings worth showing, not errors

    @property
    def kind(self) -> str:
        """The name users know: LoRA, LoCon, LoHa, LoKr, with "+DoRA" when weight-decomposed."""
        if self.algo == "lora":
            name = "LoCon" if self.has_conv else "LoRA"
        else:
            name = {"loha": "LoHa", "lokr": "LoKr"}[self.algo]
        return f"{name}+DoRA" if self.dora_wd else name

    @property
    def trains_text_encoders(self) -> bool:
        """Whether the preset has text-encoder modules at all (LyCORIS's unet-transformer-only has none)."""
        return self.preset != "unet-transformer-only"

    @property
    def has_conv(self) -> bool:
        """Whether 3x3 convolutions get adapters (networks.lora: conv_dim or conv_block_dims, as sd-scripts)."""
        conv = self.conv_dim > 0 or (bool(self.conv_block_dims) and self.per_block)
        return conv and self.preset in PRESETS_WITH_CONV

    @property
    def has_block_lr(self) -> bool:
        """Whether per-block learning-rate weights are set (sd-scripts then also turns per-block ranks on)."""
        return bool(self.down_lr_weight or self.mid_lr_weight or self.up_lr_weight)

    @property
    def per_block(self) -> bool:
        """Whether the UNet's ranks or learning rates differ by block."""
        return bool(self.block_dims) or self.has_block_lr

    def loraplus_ratio(self, unet: bool) -> float | None:
        """LoRA+'s ratio for the UNet or the text encoders (None: off); the part's own ratio wins, and 0 counts as
        not given, as in sd-scripts."""
        own = self.loraplus_unet_lr_ratio if unet else self.loraplus_text_encoder_lr_ratio
        return own or self.loraplus_lr_ratio or None

    def args(self) -> list[str]:
        """Canonical network_args for metadata and saved configs: the values that differ from the module's defaults
        plus those a reader needs (algo, preset, conv rank)."""
        if self.module == KOHYA_LORA:
            out = [f"conv_dim={self.conv_dim}", f"conv_alpha={self.conv_alpha:g}"] if self.conv_dim else []
        else:
            out = [f"algo={self.algo}", f"preset={self.preset}", f"conv_dim={self.conv_dim}",
                   f"conv_alpha={self.conv_alpha:g}"]
            out += [f"factor={self.factor}"] if self.algo == "lokr" else []
            out += ["decompose_both=True"] if self.decompose_both else []
            out += ["use_tucker=True"] if self.use_tucker else []
            out += ["dora_wd=True"] if self.dora_wd else []
            out += ["wd_on_output=False"] if self.dora_wd and not self.wd_on_output else []
            out += [f"dropout={self.dropout:g}"] if self.dropout else []
        out += [f"rank_dropout={self.rank_dropout:g}"] if self.rank_dropout else []
        out += [f"module_dropout={self.module_dropout:g}"] if self.module_dropout else []
        return out + self._block_args()

    def _block_args(self) -> list[str]:
        out = [f"{key}={','.join(f'{v:g}' for v in getattr(self, key))}" for key in BLOCK_RANK_ARGS
               if getattr(self, key)]
        out += [f"{key}={getattr(self, key)}" for key in BLOCK_LR_ARGS[:3] if getattr(self, key)]
        out += [f"block_lr_zero_threshold={self.block_lr_zero_threshold:g}"] if self.block_lr_zero_threshold else []
        return out + [f"{key}={getattr(self, key):g}" for key in LORAPLUS_ARGS if getattr(self, key) is not None]


def split_args(value: Any) -> list[str]:
    """network_args as kohya takes them: a TOML list of ``key=value`` strings, or one string of them separated by
    spaces (quotes keep a value with spaces together, commas inside a value stay: ``block_dims=2,4,4``)."""
    if value is None:
        return []
    if isinstance(value, str):
        try:  # "algo=loha, preset=full" is read as two args too
            return [arg.rstrip(",") for arg in shlex.split(value) if arg.rstrip(",")]
        except ValueError as err:
            raise NetworkArgsError(f"network_args: {err}; write key=value pairs separated by spaces") from None
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    raise NetworkArgsError("network_args must be a list of 'key=value' strings")


def parse_pairs(args: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise NetworkArgsError(f"network_args '{arg}': write key=value, e.g. conv_dim=8")
        if key in pairs:
            raise NetworkArgsError(f"network_args: '{key}' is given twice")
        pairs[key] = value.strip()
    return pairs


def _number(key: str, text: str, kind: type, low: float, high: float | None = None) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise NetworkArgsError(f"network_args {key}={text}: must be a{'n integer' if kind is int else ' number'}") \
            from None
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise NetworkArgsError(f"network_args {key}={text}: must be {bound}")
    return value


def _flag(key: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", "none", ""):
        return False
    raise NetworkArgsError(f"network_args {key}={text}: must be True or False")


def _check_known(pairs: dict[str, str], module: str) -> None:
    accepted = KOHYA_LORA_ARGS if module == KOHYA_LORA else LYCORIS_ARGS
    for key in pairs:
        if key in accepted:
            continue
        if key == "dim_from_weights":  # sd-scripts reads it from the command line, never from network_args
            raise NetworkArgsError("network_args 'dim_from_weights' is not a network arg: write dim_from_weights = "
                                   "true as its own setting, beside network_weights")
        if key in KOHYA_LORA_ARGS:
            raise NetworkArgsError(f"network_args '{key}' works with network_module = \"{KOHYA_LORA}\" only; "
                                   f"remove it or change network_module")
        if key in NOT_YET:
            raise NetworkArgsError(f"network_args '{key}' ({NOT_YET[key]}) is not supported yet; remove it")
        if key in LYCORIS_ARGS and module == KOHYA_LORA:
            raise NetworkArgsError(f"network_args '{key}' needs network_module = \"{LYCORIS}\"; networks.lora "
                                   f"accepts {', '.join(KOHYA_LORA_ARGS)}")
        raise NetworkArgsError(f"network_args '{key}' is unknown to {module}; it accepts {', '.join(accepted)}")


def _algo(text: str) -> Algo:
    name = text.lower()
    if name in LYCORIS_ALGOS:
        return LYCORIS_ALGOS[name]  # type: ignore[return-value]
    what = "is a LyCORIS algorithm not supported here" if name in UNSUPPORTED_ALGOS else "is unknown"
    raise NetworkArgsError(f"network_args algo={text} {what}; use one of locon, loha, lokr (lora = locon)")


def _preset(text: str) -> ModulePreset:
    if text in LYCORIS_PRESETS:
        return text  # type: ignore[return-value]
    raise NetworkArgsError(f"network_args preset={text}: use one of {', '.join(LYCORIS_PRESETS)} (a preset file is "
                           f"not supported)")


def _conv(pairs: dict[str, str], flat_dim: int | None, flat_alpha: float | None,
          default_dim: int, default_alpha: float) -> tuple[int, float]:
    """conv_dim/conv_alpha from network_args or kohya's flat keys; both given and different is a contradiction."""
    dim = _number("conv_dim", pairs["conv_dim"], int, 0, 1024) if "conv_dim" in pairs else None
    alpha = _number("conv_alpha", pairs["conv_alpha"], float, 0) if "conv_alpha" in pairs else None
    for key, arg, flat in (("conv_dim", dim, flat_dim), ("conv_alpha", alpha, flat_alpha)):
        if arg is not None and flat is not None and float(arg) != float(flat):
            raise NetworkArgsError(f"{key} is {flat:g} but network_args says {key}={arg:g}; keep one")
    dim = dim if dim is not None else flat_dim
    alpha = alpha if alpha is not None else flat_alpha
    dim = default_dim if dim is None else dim
    alpha = (default_alpha if dim else 1.0) if alpha is None else alpha
    return dim, alpha


def parse_network(module: str, args: list[str], network_dim: int, network_alpha: float,
                  conv_dim: int | None = None, conv_alpha: float | None = None) -> NetworkSpec:
    """Resolve kohya's network settings; raises NetworkArgsError naming the offending module or arg."""
    if module not in NETWORK_MODULES:
        raise NetworkArgsError(f"network_module '{module}' is not supported; use \"{KOHYA_LORA}\" (LoRA/LoCon) or "
                               f"\"{LYCORIS}\" (LoCon/LoHa/LoKr/DoRA)")
    pairs = parse_pairs(args)
    _check_known(pairs, module)
    dropouts = {key: _number(key, pairs[key], float, 0, 1) for key in ("dropout", "rank_dropout", "module_dropout")
                if key in pairs}
    if module == KOHYA_LORA:
        dim, alpha = _conv(pairs, conv_dim, conv_alpha, 0, network_alpha)
        spec = NetworkSpec(module, "lora", "kohya", dim, alpha, **dropouts, **_block_settings(pairs))
        return _with_notes(spec)
    # LyCORIS: conv rank/alpha default to the linear ones; 0 also means "the linear rank" there.
    dim, alpha = _conv(pairs, conv_dim, conv_alpha, network_dim, network_alpha)
    spec = NetworkSpec(
        module, _algo(pairs.get("algo", "lora")), _preset(pairs.get("preset", "full")), dim or network_dim, alpha,
        factor=_number("factor", pairs["factor"], int, -1) if "factor" in pairs else -1,
        decompose_both=_flag("decompose_both", pairs.get("decompose_both", "")),
        use_tucker=any(_flag(k, pairs.get(k, "")) for k in ("use_tucker", "use_cp", "use_conv_cp"))
        or ("disable_conv_cp" in pairs and not _flag("disable_conv_cp", pairs["disable_conv_cp"])),
        dora_wd=_flag("dora_wd", pairs.get("dora_wd", "")),
        wd_on_output=_flag("wd_on_output", pairs.get("wd_on_output", "True")),
        **dropouts,
    )
    if spec.factor == 0:
        raise NetworkArgsError("network_args factor=0: use -1 (automatic) or a factor >= 1")
    if spec.dora_wd and spec.algo != "lora":
        raise NetworkArgsError(f"network_args dora_wd=True works with algo=locon (or lora) here, not algo="
                               f"{spec.algo}; remove dora_wd or change algo")
    explicit_conv = "conv_dim" in pairs or conv_dim is not None
    return _with_notes(spec, explicit_conv)


def _numbers(key: str, text: str, kind: type, low: float) -> tuple:
    """A comma list of numbers as sd-scripts reads block_dims and its kin: every entry given."""
    values = tuple(_number(key, part.strip(), kind, low) for part in text.split(","))
    if len(values) not in BLOCK_COUNTS.values():
        counts = ", ".join(f"{n} for {family}" for family, n in BLOCK_COUNTS.items())
        raise NetworkArgsError(f"network_args {key} has {len(values)} values; it takes one per UNet block: {counts}")
    return values


def _lr_weight(key: str, text: str) -> str:
    """down_lr_weight/up_lr_weight: a comma list (an empty entry is 0, as in sd-scripts) or a preset with an optional
    "+number" added to every block; mid_lr_weight: a comma list or one number."""
    if "," in text or key == "mid_lr_weight":
        for part in text.split(","):
            if part.strip():
                _number(key, part.strip(), float, 0)
        return text
    name, plus, offset = text.partition("+")
    if name not in LR_WEIGHT_PRESETS or (plus and not offset):
        raise NetworkArgsError(f"network_args {key}={text}: write one weight per block separated by commas, or one "
                               f"of {', '.join(LR_WEIGHT_PRESETS)} (optionally +number, e.g. cosine+0.5)")
    if plus:
        _number(key, offset, float, 0)
    return text


def _block_settings(pairs: dict[str, str]) -> dict[str, Any]:
    """networks.lora's block_dims and kin, LoRA+ ratios, parsed and range-checked (lengths against the model's
    blocks come later, when the model is known)."""
    out: dict[str, Any] = {}
    for key, kind, low in (("block_dims", int, 0), ("block_alphas", float, 0), ("conv_block_dims", int, 0),
                           ("conv_block_alphas", float, 0)):
        if key in pairs:
            out[key] = _numbers(key, pairs[key], kind, low)
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise NetworkArgsError(f"network_args {', '.join(out)} must have the same number of values (one per block)")
    for key in BLOCK_LR_ARGS[:3]:
        if key in pairs:
            out[key] = _lr_weight(key, pairs[key])
    if "block_lr_zero_threshold" in pairs:
        out["block_lr_zero_threshold"] = _number("block_lr_zero_threshold", pairs["block_lr_zero_threshold"], float, 0)
    for key in LORAPLUS_ARGS:
        if key in pairs:
            out[key] = _number(key, pairs[key], float, 0)
    return out


def _with_notes(spec: NetworkSpec, explicit_conv: bool = True) -> NetworkSpec:
    notes = []
    if not spec.per_block and (spec.block_alphas or spec.conv_block_dims or spec.conv_block_alphas):
        notes.append("block_alphas/conv_block_dims/conv_block_alphas have no effect without block_dims or a "
                     "per-block learning rate (as in sd-scripts)")
    if spec.conv_block_alphas and not spec.conv_block_dims:
        notes.append("conv_block_alphas has no effect without conv_block_dims")
    if explicit_conv and spec.conv_dim and spec.preset not in PRESETS_WITH_CONV:
        notes.append(f"conv_dim={spec.conv_dim} has no effect: preset={spec.preset} has no convolutions "
                     f"(use preset=full for LoCon)")
    if spec.use_tucker and not spec.has_conv:
        notes.append("use_tucker only changes 3x3 convolutions, and this network has none")
    return replace(spec, notes=tuple(notes))
