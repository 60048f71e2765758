"""A kohya LoRA file read into per-module groups, what kind of network it holds, which model family it is for, and
the checks every tool makes on its output path. Shared by all the subcommands."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from training.contract.errors import UserError
from training.lora_files.kinds import layout_for_parts
from training.tools.deltas import ALPHA, DOWN

# Key parts that name a network type other than LoRA/LoCon (LyCORIS' and peft's names).
OTHER_TYPES = {"hada_w1_a": "LoHa", "hada_w1_b": "LoHa", "lokr_w1": "LoKr", "lokr_w1_a": "LoKr", "lokr_w2": "LoKr",
               "lokr_w2_a": "LoKr", "dora_scale": "DoRA", "lora_mid.weight": "LoCon (CP)", "diff": "full diff",
               "w_norm": "norm", "b_norm": "norm", "oft_blocks": "OFT", "oft_diag": "OFT"}
FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
# ss_base_model_version prefixes (kohya's and ours) -> family.
BASE_VERSIONS = (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd1"))
TE_WIDTHS = {768: "sd1", 1024: "sd2"}


@dataclass
class LoraFile:
    path: Path
    modules: dict[str, dict[str, torch.Tensor]]  # kohya module name -> {part: tensor}
    metadata: dict[str, str]

    @property
    def network_type(self) -> str:
        """"LoRA", "LoCon" (a conv module with a kernel over 1x1), or the other type its keys name."""
        parts = {part for tensors in self.modules.values() for part in tensors}
        others = sorted({OTHER_TYPES[p] for p in parts if p in OTHER_TYPES})
        if others:
            return "+".join(others)
        conv = any(t[DOWN].ndim == 4 and tuple(t[DOWN].shape[2:]) != (1, 1) for t in self.modules.values()
                   if DOWN in t)
        return "LoCon" if conv else "LoRA"

    @property
    def family(self) -> str | None:
        """sd1/sd2/sdxl from the metadata, else from the key prefixes and the text encoder's width; None when
        nothing tells."""
        version = self.metadata.get("ss_base_model_version", "")
        for prefix, family in BASE_VERSIONS:
            if version.startswith(prefix):
                return family
        if any(name.startswith(("lora_te1_", "lora_te2_")) for name in self.modules):
            return "sdxl"
        if self.metadata.get("ss_v2") in ("True", "False") and self.te_width():
            return "sd2" if self.metadata["ss_v2"] == "True" else "sd1"
        return TE_WIDTHS.get(self.te_width() or 0)

    def te_width(self) -> int | None:
        for name, tensors in self.modules.items():
            if name.startswith("lora_te_") and name.endswith("q_proj") and DOWN in tensors:
                return int(tensors[DOWN].shape[1])
        return None

    def rank(self, name: str) -> int:
        return int(self.modules[name][DOWN].shape[0])

    def alpha(self, name: str) -> float:
        alpha = self.modules[name].get(ALPHA)
        return float(self.rank(name)) if alpha is None else float(alpha)


def read_lora(path: Path) -> LoraFile:
    """Every tensor of a kohya-style ``.safetensors`` LoRA, grouped per module. A missing, truncated or foreign
    file is a one-line ``UserError`` naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: LoRA file not found; check the path")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: not a .safetensors file; the tools read kohya LoRA files in .safetensors format")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
            metadata = dict(fh.metadata() or {})
    except Exception as err:  # safetensors' own error types for a cut or corrupt file
        raise UserError(f"{path}: cannot be read as safetensors ({first_line(err)}); the file is damaged or "
                        "incomplete, download or export it again") from None
    modules = group_modules(tensors)
    if not modules:
        raise UserError(f"{path}: holds no LoRA modules (no lora_down/lora_up keys); is it a LoRA file?")
    return LoraFile(path, modules, metadata)


def group_modules(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {part: tensor}}``: the module name is everything before the first dot (kohya names have none)."""
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in tensors.items():
        name, dot, part = key.partition(".")
        if dot and re.match(r"^lora_(unet|te\d?)_", name):
            modules[name][part] = tensor
    return dict(modules)


def require_lora(lora: LoraFile, operation: str, any_type: bool = False, needs_base_ok: bool = True) -> None:
    """Refuse a type the operation cannot take (``any_type``: every type training exports, LoRA/LoCon/LoHa/LoKr/DoRA,
    else LoRA and LoCon only; ``needs_base_ok=False``: not DoRA, whose change needs the base weights), and modules
    missing a part their type needs."""
    kind = lora.network_type
    if not needs_base_ok and "DoRA" in kind.split("+"):
        raise UserError(f"{lora.path}: {operation} of DoRA files is not possible: a DoRA module's change depends on "
                        "the base model's weights, which the file does not hold; merge it into the checkpoint with "
                        "`merge` instead")
    exported = set(kind.split("+")) <= {"LoRA", "LoCon", "LoHa", "LoKr", "DoRA"}
    if not (exported if any_type else kind in ("LoRA", "LoCon")):
        accepted = "LoRA, LoCon, LoHa, LoKr or DoRA" if any_type else "LoRA or LoCon"
        raise UserError(f"{lora.path}: {operation} of {kind} files is not supported yet; use a {accepted} file")
    broken = sorted(name for name, parts in lora.modules.items() if _incomplete(parts))
    if broken:
        raise UserError(f"{lora.path}: {len(broken)} module(s) lack a part of their type (e.g. lora_down or "
                        f"lora_up), e.g. {broken[:3]}; the file is incomplete, export it again")


def _incomplete(parts: Mapping[str, torch.Tensor]) -> bool:
    layout = layout_for_parts(parts)
    return layout is None or bool(layout.missing(dict(parts)))


def parse_strength(spec: str) -> tuple[Path, float]:
    """``A.safetensors[:STRENGTH]``; the colon of a Windows drive (``C:\\...``) is not a strength."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail):
        return Path(head), float(tail)
    return Path(spec), 1.0


def check_output(out: Path, inputs: Iterable[Path], force: bool, suffix: str | None = ".safetensors") -> None:
    """Refuse an output that is one of the inputs, has the wrong suffix, or exists without ``--force``."""
    out = Path(out)
    for source in inputs:
        if Path(source).exists() and out.exists() and out.resolve() == Path(source).resolve():
            raise UserError(f"{out}: the output is also an input; write to another file")
    if suffix is not None and out.suffix.lower() != suffix:
        raise UserError(f"{out}: the output must be a {suffix} file")
    if out.exists() and not force:
        raise UserError(f"{out}: already exists; choose another name or add --force to overwrite it")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"{out.parent}: is not a folder")


def family_mismatch(lora: LoraFile, family: str) -> str | None:
    """The one-line reason a LoRA does not fit a model of ``family``, or None when it may."""
    mine = lora.family
    if mine is None or mine == family:
        return None
    theirs = FAMILY_LABELS.get(family, family)
    return (f"{lora.path}: an {FAMILY_LABELS.get(mine, mine)} LoRA, but the model is {theirs}; use a LoRA trained "
            f"on {theirs} or a matching checkpoint")


def most_common(values: Iterable[float]) -> float | None:
    counts = Counter(values).most_common(1)
    return counts[0][0] if counts else None


def network_metadata(modules: Mapping[str, Mapping[str, torch.Tensor]], dynamic: bool) -> dict[str, str]:
    """ss_network_dim/alpha. Where modules differ: "Dynamic" when ``dynamic`` (kohya's resize writes that), else
    the most common rank and alpha (what training's export writes, and what the self-check compares)."""
    linear = {n: t for n, t in modules.items() if not _conv3x3(t)}
    conv = {n: t for n, t in modules.items() if _conv3x3(t)}
    dim, alpha = _rank_and_alpha(linear or modules, dynamic)
    out = {"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": alpha}
    if conv:  # kohya's LoCon states its conv rank in the network args
        conv_dim, conv_alpha = _rank_and_alpha(conv, dynamic)
        out["ss_network_args"] = json_text({"conv_dim": conv_dim, "conv_alpha": conv_alpha})
    return out


def _conv3x3(tensors: Mapping[str, torch.Tensor]) -> bool:
    return tensors[DOWN].ndim == 4 and tuple(tensors[DOWN].shape[2:]) != (1, 1)


def _rank_and_alpha(modules: Mapping[str, Mapping[str, torch.Tensor]], dynamic: bool) -> tuple[str, str]:
    ranks = [int(t[DOWN].shape[0]) for t in modules.values()]
    alphas = [float(t[ALPHA]) for t in modules.values() if ALPHA in t]
    dim = "Dynamic" if dynamic and len(set(ranks)) > 1 else f"{most_common(ranks):g}"
    alpha = "Dynamic" if dynamic and len(set(alphas)) > 1 else f"{most_common(alphas) or 1.0:g}"
    return dim, alpha


def family_metadata(family: str | None) -> dict[str, str]:
    """The family markers A1111 filters LoRAs on, for a file whose family is known."""
    from training.models.families import FAMILIES

    if family not in FAMILIES:
        return {}
    fam = FAMILIES[family]
    return {"ss_v2": str(bool(fam.v2)), "ss_base_model_version": fam.base_model_version,
            "modelspec.architecture": f"{fam.modelspec_architecture}/lora"}


def lora_tensors(modules: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Flat kohya state dict: down/up in fp16 (the export policy), alpha in fp32 (a scale times a rank need not be
    an fp16 number)."""
    out: dict[str, torch.Tensor] = {}
    for name in sorted(modules):
        for part, tensor in modules[name].items():
            dtype = torch.float32 if part == ALPHA else torch.float16
            out[f"{name}.{part}"] = tensor.to(dtype).contiguous()
    return out


def save(path: Path, modules: Mapping[str, Mapping[str, torch.Tensor]], metadata: Mapping[str, str]) -> None:
    """Atomic write with the space checked first and kohya's sshs hash (``export.save_lora``)."""
    from training.lora_files.export import save_lora

    save_lora(Path(path), lora_tensors(modules), {k: str(v) for k, v in metadata.items()})


def json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]
