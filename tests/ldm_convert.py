"""Test helper: a diffusers SD1/SD2/SDXL pipeline -> original (LDM / CompVis / SGM) single-file state dict.

Lets tests produce the files users actually have (``v1-5-pruned.safetensors`` style) from tiny random models.
Written from the layout facts (the inverse of diffusers' ``single_file_utils`` LDM -> diffusers conversion):

* UNet ``model.diffusion_model.*``: down block i, layer j -> ``input_blocks.{1 + i*(L+1) + j}`` (``.0`` resnet,
  ``.1`` attention), its downsampler -> ``input_blocks.{(i+1)*(L+1)}.0.op``; mid -> ``middle_block.{0,1,2}``; up block i
  layer j -> ``output_blocks.{i*(L+1) + j}``, upsampler in the last layer at ``.1.conv`` (no attention) or ``.2.conv``;
  resnet parts norm1/conv1/norm2/conv2/time_emb_proj/conv_shortcut -> in_layers.0/in_layers.2/out_layers.0/
  out_layers.3/emb_layers.1/skip_connection. Attention internals keep their names.
* VAE ``first_stage_model.*``: ``down_blocks.i.resnets.j`` -> ``down.i.block.j``; decoder up blocks are numbered in
  reverse (``up_blocks.i`` -> ``up.{n-1-i}``); mid resnets -> ``mid.block_{1,2}``; the mid attention uses 1x1 convs
  ``q k v proj_out norm``; ``conv_norm_out`` -> ``norm_out``; ``conv_shortcut`` -> ``nin_shortcut``.
* SD1 text encoder: ``cond_stage_model.transformer.text_model.*`` (HF CLIP names).
* SD2 text encoder: OpenCLIP ``cond_stage_model.model.*`` with fused ``attn.in_proj_*`` (q;k;v stacked) and a
  ``text_projection`` of shape [width, width] (diffusers reads the width from it and then ignores it).
* SDXL (SGM layout, ``sd_xl_base_1.0.safetensors``): the same UNet and VAE (plus ``label_emb`` for the UNet's
  text_time embedding), TE1 as HF CLIP under ``conditioner.embedders.0.transformer.text_model.``, TE2 as OpenCLIP
  under ``conditioner.embedders.1.model.`` with its real ``text_projection`` stored as [width, projection], i.e. the
  diffusers ``text_projection.weight`` transposed (OpenCLIP computes ``x @ text_projection``).
"""

from __future__ import annotations

import torch

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


SD_CLIP = "cond_stage_model.transformer.text_model."
SD2_OPEN_CLIP = "cond_stage_model.model."
SDXL_CLIP = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP = "conditioner.embedders.1.model."


def diffusers_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline as one LDM-layout (SGM for SDXL) state dict (cloned, contiguous tensors)."""
    out = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(pipe.unet).items()}
    out.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(pipe.vae).items()})
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: CLIP-L + OpenCLIP-bigG with projection
        out.update(clip_to_ldm(pipe.text_encoder, SDXL_CLIP))
        te2 = pipe.text_encoder_2
        out.update(open_clip_to_ldm(te2, SDXL_OPEN_CLIP, projection=te2.text_projection.weight.T))
    else:
        open_clip = pipe.text_encoder.config.hidden_act == "gelu"
        out.update(open_clip_to_ldm(pipe.text_encoder) if open_clip else clip_to_ldm(pipe.text_encoder))
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _sub(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    raise KeyError(name)


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    per = unet.config.layers_per_block + 1
    up_attention = {i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)}
    return {_unet_key(key, per, up_attention): value for key, value in unet.state_dict().items()}


def _unet_key(key: str, per: int, up_attention: set[int]) -> str:
    parts = key.split(".")
    if parts[0] == "mid_block":
        j, rest = int(parts[2]), ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"middle_block.{2 * j}.{_sub(rest, UNET_RESNET)}"
        return f"middle_block.1.{rest}"
    if parts[0] not in ("down_blocks", "up_blocks"):
        return _sub(key, UNET_TOP)
    down, i, kind, rest = parts[0] == "down_blocks", int(parts[1]), parts[2], ".".join(parts[4:])
    if kind == "downsamplers":
        return f"input_blocks.{(i + 1) * per}.0.op.{rest.removeprefix('conv.')}"
    if kind == "upsamplers":
        return f"output_blocks.{i * per + per - 1}.{2 if i in up_attention else 1}.{rest}"
    block = f"input_blocks.{1 + i * per + int(parts[3])}" if down else f"output_blocks.{i * per + int(parts[3])}"
    if kind == "resnets":
        return f"{block}.0.{_sub(rest, UNET_RESNET)}"
    return f"{block}.1.{rest}"


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n_up = len(vae.decoder.up_blocks)
    out = {}
    for key, value in vae.state_dict().items():
        new = _vae_key(key, n_up)
        if ".mid.attn_1." in new and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convs
        out[new] = value
    return out


def _vae_key(key: str, n_up: int) -> str:
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    parts = key.split(".")
    if len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
        side, i, kind, rest = parts[0], int(parts[2]), parts[3], ".".join(parts[5:])
        level = i if parts[1] == "down_blocks" else n_up - 1 - i
        stage = "down" if parts[1] == "down_blocks" else "up"
        if kind == "resnets":
            return f"{side}.{stage}.{level}.block.{parts[4]}.{rest}"
        return f"{side}.{stage}.{level}.{'downsample' if stage == 'down' else 'upsample'}.{rest}"
    if len(parts) > 2 and parts[1] == "mid_block":
        side, kind, j, rest = parts[0], parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{side}.mid.block_{j + 1}.{rest}"
        return f"{side}.mid.attn_1.{_sub(rest, VAE_ATTN)}"
    return key


def clip_to_ldm(text_encoder, prefix: str = SD_CLIP) -> dict[str, torch.Tensor]:
    """HF CLIP names under the CompVis prefix (transformers 5 dropped the ``text_model.`` level; LDM files keep it)."""
    return {prefix + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def open_clip_to_ldm(text_encoder, prefix: str = SD2_OPEN_CLIP, projection: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """OpenCLIP layout with fused q/k/v. ``projection`` is the stored ``text_projection`` ([width, proj]); SD2
    files carry an unused [width, width] one, so it defaults to eye(width)."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    width = text_encoder.config.hidden_size
    p = prefix
    out = {
        p + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        p + "positional_embedding": sd["embeddings.position_embedding.weight"],
        p + "ln_final.weight": sd["final_layer_norm.weight"],
        p + "ln_final.bias": sd["final_layer_norm.bias"],
        p + "text_projection": torch.eye(width) if projection is None else projection,
    }
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            out[f"{dst}attn.out_proj.{kind}"] = sd[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = sd[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = sd[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = sd[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = sd[f"{src}mlp.fc2.{kind}"]
    return out
