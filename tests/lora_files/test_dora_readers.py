"""What each reader computes from our DoRA file (dora_scale [out, 1] / [out, 1, 1, 1], LyCORIS's wd_on_output=True).

peft and LyCORIS (test_types.py): W' = m * (W + dW) / ||W + dW||, the norm over each output row.
ComfyUI and Forge (comfy/weight_adapter/base.py ``weight_decompose``, Forge's copy of it): they see dora_scale's first
side equals the weight's outputs and take the norm over each output row, but of the base weight W, not of W + dW:
W' = m * (W + dW) / (||W|| + eps). Their result is ours times ||W + dW|| / ||W|| per output row: equal where the
trained change leaves the row norms alone, not in general.
A1111's built-in Lora (extensions-builtin/Lora/network.py ``apply_weight_decompose``) always divides by the norm of each
input column of W + dW, so a per-output dora_scale [out, 1] against column norms [1, in] becomes the outer quotient
m_i / ||col_j||: not DoRA. The formulas below are written from reading those functions; they state what a user of
each program gets from our file.
"""

from __future__ import annotations

import torch
from lora_types import CASES, merged_delta, module_tensors, typed_pipeline

from training.lora_files.export import kohya_state_dict
from training.models.families import FAMILIES

NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
PATH = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _module():
    pipe = typed_pipeline(CASES["dora"])
    t = module_tensors(kohya_state_dict(pipe.unet, [pipe.text_encoder], FAMILIES["sd1"], torch.float32))[NAME]
    layer = pipe.unet.get_submodule(PATH)
    weight = layer.get_base_layer().weight.detach().double()
    low_rank = t["lora_up.weight"] @ t["lora_down.weight"] * (t["alpha"] / t["lora_down.weight"].shape[0])
    return t, weight, low_rank, weight + merged_delta(layer)


def _row_norms(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1, keepdim=True)


def test_comfyui_and_forge_divide_by_the_base_weights_row_norms():
    t, weight, low_rank, ours = _module()
    eps = torch.finfo(torch.float32).eps
    comfy = (weight + low_rank) * (t["dora_scale"] / (_row_norms(weight) + eps))
    assert t["dora_scale"].shape == (weight.shape[0], 1)  # the axis test ComfyUI makes: dora_scale.shape[0] == out
    ratio = _row_norms(weight + low_rank) / _row_norms(weight)
    torch.testing.assert_close(comfy, ours * ratio, rtol=1e-5, atol=1e-6)
    assert float((ratio - 1).abs().max()) > 1e-2  # with a real trained change, ComfyUI's weight is not ours


def test_a1111_divides_by_input_column_norms():
    t, weight, low_rank, ours = _module()
    merged = weight + low_rank
    columns = merged.norm(dim=0, keepdim=True)  # [1, in]
    a1111 = merged * (t["dora_scale"] / columns)  # [out, 1] / [1, in] broadcasts to [out, in]
    expected = merged * (t["dora_scale"] @ (1 / columns))  # m_i / ||column_j||: the outer quotient
    torch.testing.assert_close(a1111, expected)
    assert float((a1111 - ours).norm() / ours.norm()) > 1e-2
