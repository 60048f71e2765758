"""Which checkpoint tensor each kohya LoRA module changes, read from the checkpoint's own keys (no model is built).

A single-file checkpoint keeps the original layout: the UNet under ``model.diffusion_model.`` in LDM/SGM names
(``input_blocks.4.1.proj_in``), CLIP text encoders in Hugging Face names, OpenCLIP ones (SD2, SDXL's second) with
q, k and v fused into one ``in_proj_weight`` of 3 x width rows. kohya files name UNet modules in either convention
(diffusers for SD1/SD2, SGM for SDXL), so every UNet tensor is indexed under both: the SGM name comes from the key,
the diffusers one from ``sgm_to_diffusers``, checked by converting back with ``names.diffusers_to_sgm``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from training.lora_files.names import UNET_PREFIX, diffusers_to_sgm, kohya_name

UNET_KEY = "model.diffusion_model."
# (key prefix, kohya prefix, OpenCLIP layout) per text encoder, by family.
TEXT_ENCODERS = {
    "sd1": [("cond_stage_model.transformer.text_model.", "lora_te", False)],
    "sd2": [("cond_stage_model.model.", "lora_te", True)],
    "sdxl": [("conditioner.embedders.0.transformer.text_model.", "lora_te1", False),
             ("conditioner.embedders.1.model.", "lora_te2", True)],
}
_TOP = {"input_blocks.0.0": "conv_in", "out.2": "conv_out", "out.0": "conv_norm_out",
        "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2"}
_RESNET = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
           "skip_connection": "conv_shortcut", "in_layers.0": "norm1", "out_layers.0": "norm2"}
_OPEN_CLIP = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TEXT_TARGETS = re.compile(r"\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_TRANSFORMER = re.compile(r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.(proj_in|proj_out|"
                          r"transformer_blocks\..+)$")
_RESNET_OR_SAMPLER = re.compile(r"^((input_blocks|output_blocks)\.\d+\.0\.|middle_block\.[02]\.)"
                                r"(in_layers\.2|out_layers\.3|emb_layers\.1|skip_connection)$|"
                                r"^input_blocks\.\d+\.0\.op$|^output_blocks\.\d+\.[12]\.conv$")


@dataclass(frozen=True)
class Target:
    """One module's weight in the checkpoint. ``rows`` selects q, k or v inside a fused OpenCLIP in_proj_weight.
    ``kind``: "transformer" (UNet attention blocks), "resnet" (UNet convs, the LoCon targets), "text" (text-encoder
    attention and MLP: kohya's TE targets) or "other"."""

    key: str
    canonical: str  # the name our export writes (SGM for SDXL, diffusers for SD1/SD2; TE with text_model_)
    part: str       # "unet" or the kohya TE prefix
    kind: str
    rows: tuple[int, int] | None = None
    shape: tuple[int, ...] = field(default=())
    component: str = ""  # the diffusers subfolder holding ``key`` ("" for a single-file checkpoint)


@dataclass(frozen=True)
class UnetLayout:
    layers_per_block: int
    up_attention: frozenset[int]  # up blocks that have attentions (their upsampler sits at sub-index 2)

    def diffusers_path(self, sgm: str) -> str | None:
        """The diffusers path of an SGM module path, or None when it has none; checked by converting back."""
        path = _sgm_to_diffusers(sgm, self.layers_per_block, self.up_attention)
        back = None if path is None else diffusers_to_sgm(path, self.layers_per_block,
                                                          dict.fromkeys(self.up_attention, True))
        return path if back == sgm else None


def unet_layout(sgm_paths: Sequence[str]) -> UnetLayout:
    """layers_per_block from the first downsampler's index (input_blocks.{lpb+1}.0.op), else from the block count;
    up blocks with attention from the ``.1.`` transformer keys of their output blocks."""
    downsamplers = sorted(int(m.group(1)) for p in sgm_paths if (m := re.match(r"^input_blocks\.(\d+)\.0\.op\.", p)))
    inputs = {int(m.group(1)) for p in sgm_paths if (m := re.match(r"^input_blocks\.(\d+)\.", p))}
    lpb = downsamplers[0] - 1 if downsamplers else max(len(inputs) - 1, 1)
    attention = {int(m.group(1)) // (lpb + 1) for p in sgm_paths
                 if (m := re.match(r"^output_blocks\.(\d+)\.1\.(proj_in|transformer_blocks|norm)", p))}
    return UnetLayout(lpb, frozenset(attention))


def _sgm_to_diffusers(path: str, lpb: int, up_attention: frozenset[int]) -> str | None:
    for sgm, diff in _TOP.items():
        if path == sgm or path.startswith(sgm + "."):
            return diff + path[len(sgm):]
    per = lpb + 1
    m = re.match(r"^middle_block\.(\d)\.(.+)$", path)
    if m:
        sub, rest = int(m.group(1)), m.group(2)
        return f"mid_block.attentions.0.{rest}" if sub == 1 else _resnet(f"mid_block.resnets.{sub // 2}", rest)
    m = re.match(r"^(input|output)_blocks\.(\d+)\.(\d)\.(.+)$", path)
    if not m:
        return None
    side, k, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if side == "input":
        i, j = divmod(k - 1, per)
        if j == lpb:
            return f"down_blocks.{i}.downsamplers.0.conv" if (sub, rest) == (0, "op") else None
        block = f"down_blocks.{i}"
    else:
        i, j = divmod(k, per)
        block = f"up_blocks.{i}"
        if rest == "conv" and sub == (2 if i in up_attention else 1):
            return f"{block}.upsamplers.0.conv"
    if sub == 0:
        return _resnet(f"{block}.resnets.{j}", rest)
    return f"{block}.attentions.{j}.{rest}" if sub == 1 else None


def _resnet(base: str, rest: str) -> str | None:
    for sgm, diff in _RESNET.items():
        if rest == sgm or rest.startswith(sgm + "."):
            return f"{base}.{diff}{rest[len(sgm):]}"
    return None


def index_checkpoint(shapes: Mapping[str, Sequence[int]], family: str) -> dict[str, Target]:
    """``{kohya module name: Target}`` for every weight of two or more dimensions a LoRA can change, under each
    name a kohya file may use for it."""
    index: dict[str, Target] = {}
    _index_unet(shapes, family, index)
    for key_prefix, lora_prefix, open_clip in TEXT_ENCODERS[family]:
        aliases = [lora_prefix, "lora_te1"] if lora_prefix == "lora_te" else [lora_prefix]
        adder = _index_open_clip if open_clip else _index_clip
        adder(shapes, key_prefix, aliases, index)
    return index


def _weights(shapes: Mapping[str, Sequence[int]], prefix: str) -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape for the 2-D and 4-D weights under ``prefix``."""
    return {key[len(prefix):-len(".weight")]: tuple(shape) for key, shape in shapes.items()
            if key.startswith(prefix) and key.endswith(".weight") and len(shape) in (2, 4)}


def _index_unet(shapes: Mapping[str, Sequence[int]], family: str, index: dict[str, Target]) -> None:
    weights = _weights(shapes, UNET_KEY)
    layout = unet_layout([k[len(UNET_KEY):] for k in shapes if k.startswith(UNET_KEY)])
    for sgm, shape in weights.items():
        diffusers = layout.diffusers_path(sgm)
        sgm_name = kohya_name(UNET_PREFIX, sgm)
        diff_name = None if diffusers is None else kohya_name(UNET_PREFIX, diffusers)
        canonical = sgm_name if family == "sdxl" or diff_name is None else diff_name
        kind = "transformer" if _TRANSFORMER.match(sgm) else "resnet" if _RESNET_OR_SAMPLER.match(sgm) else "other"
        target = Target(f"{UNET_KEY}{sgm}.weight", canonical, "unet", kind, None, shape)
        for name in filter(None, (sgm_name, diff_name)):
            index[name] = target


def add_text_names(index: dict[str, Target], aliases: list[str], hf_path: str, target_of) -> None:
    """A text-encoder module under each accepted name: ``prefix_text_model_...`` (canonical) and the bare form."""
    canonical = kohya_name(aliases[0], f"text_model.{hf_path}")
    target = target_of(canonical)
    for alias in aliases:
        index.setdefault(kohya_name(alias, f"text_model.{hf_path}"), target)
        index.setdefault(kohya_name(alias, hf_path), target)


def _index_clip(shapes: Mapping[str, Sequence[int]], prefix: str, aliases: list[str], index: dict[str, Target]
                ) -> None:
    for path, shape in _weights(shapes, prefix).items():
        kind = "text" if _TEXT_TARGETS.search(path) else "other"
        add_text_names(index, aliases, path, lambda name, p=path, s=shape, k=kind: Target(
            f"{prefix}{p}.weight", name, aliases[0], k, None, s))


def _index_open_clip(shapes: Mapping[str, Sequence[int]], prefix: str, aliases: list[str], index: dict[str, Target]
                     ) -> None:
    """OpenCLIP resblocks in Hugging Face module names; q, k and v are thirds of the fused in_proj_weight."""
    pattern = re.compile(rf"^{re.escape(prefix)}transformer\.resblocks\.(\d+)\.(attn\.in_proj_weight|"
                         r"attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$")
    for key, shape in shapes.items():
        m = pattern.match(key)
        if not m:
            continue
        layer, leaf = f"encoder.layers.{m.group(1)}", m.group(2)
        if leaf == "attn.in_proj_weight":
            width = int(shape[0]) // 3
            for n, qkv in enumerate("qkv"):
                rows = (n * width, (n + 1) * width)
                fused = (width, int(shape[1]))
                add_text_names(index, aliases, f"{layer}.self_attn.{qkv}_proj",
                               lambda name, r=rows, k=key, s=fused: Target(k, name, aliases[0], "text", r, s))
        else:
            hf = _OPEN_CLIP[leaf.removesuffix(".weight")]
            add_text_names(index, aliases, f"{layer}.{hf}", lambda name, k=key, s=tuple(shape): Target(
                k, name, aliases[0], "text", None, s))


def index_diffusers_unet(shapes: Mapping[str, Sequence[int]], family: str, config: Mapping) -> dict[str, Target]:
    """The same for a diffusers folder's UNet file: keys are diffusers paths, the SGM names come from
    ``names.diffusers_to_sgm`` with the folder's own layout."""
    lpb = config.get("layers_per_block", 2)
    lpb = int(lpb if isinstance(lpb, int) else lpb[0])
    up_attention = {i: "CrossAttn" in kind for i, kind in enumerate(config.get("up_block_types", ()))}
    index: dict[str, Target] = {}
    for path, shape in _weights(shapes, "").items():
        sgm = diffusers_to_sgm(path, lpb, up_attention)
        diff_name = kohya_name(UNET_PREFIX, path)
        sgm_name = None if sgm is None else kohya_name(UNET_PREFIX, sgm)
        canonical = sgm_name if family == "sdxl" and sgm_name else diff_name
        kind = "transformer" if sgm and _TRANSFORMER.match(sgm) else "resnet" if sgm and _RESNET_OR_SAMPLER.match(
            sgm) else "other"
        target = Target(f"{path}.weight", canonical, "unet", kind, None, shape, "unet")
        for name in filter(None, (diff_name, sgm_name)):
            index[name] = target
    return index


def index_diffusers_text(shapes: Mapping[str, Sequence[int]], prefix: str, component: str) -> dict[str, Target]:
    """A diffusers folder's text encoder file (Hugging Face CLIP names, with or without ``text_model.``)."""
    aliases = [prefix, "lora_te1"] if prefix == "lora_te" else [prefix]
    index: dict[str, Target] = {}
    for path, shape in _weights(shapes, "").items():
        hf = path.removeprefix("text_model.")
        kind = "text" if _TEXT_TARGETS.search(hf) else "other"
        add_text_names(index, aliases, hf, lambda name, p=path, s=shape, k=kind: Target(
            f"{p}.weight", name, prefix, k, None, s, component))
    return index


def unmatched(names: Sequence[str], index: Mapping[str, Target]) -> list[str]:
    return sorted(n for n in names if n not in index)
