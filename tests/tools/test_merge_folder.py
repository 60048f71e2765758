"""merge of a diffusers folder: a diffusers folder comes out, its UNet and text-encoder weights changed by exactly
W + s * (alpha/r) * up @ down (computed here) and every other tensor and file as it was."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from tool_files import delta_of, random_lora, save_lora_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from training.lora_files.names import canonical_name, target_paths
from training.models.families import FAMILIES
from training.tools.merge import merge

FILES = {"unet": "unet/diffusion_pytorch_model.safetensors", 0: "text_encoder/model.safetensors",
         1: "text_encoder_2/model.safetensors"}


def attention_modules(folder, family):
    """kohya name -> (component, module path) for the attention projections of the folder's models."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder")]
    if family == "sdxl":
        encoders.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"))
    out = {}
    for component, model in [("unet", unet), *enumerate(encoders)]:
        for path in target_paths(model):
            if path.endswith((".to_q", ".to_v", ".q_proj", ".out_proj")):
                name = canonical_name(component, path, FAMILIES[family], model, len(encoders))
                out[name] = (component, path, model.get_submodule(path))
    return out


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_diffusers_folder_merges_into_a_diffusers_folder(request, tmp_path, family):
    folder = request.getfixturevalue(f"tiny_{family}")
    modules = attention_modules(folder, family)
    tensors = random_lora({name: m for name, (_, _, m) in modules.items()}, rank=2, alpha=1.0, seed=51)
    lora = save_lora_file(tmp_path / "a.safetensors", tensors, family)
    out = tmp_path / "merged"
    merge(folder, [(lora, 0.6)], out, log=lambda *_: None)
    expected = {component: load_file(str(folder / path)) for component, path in FILES.items()
                if (folder / path).is_file()}
    for name, (component, path, _) in modules.items():
        weight = expected[component][f"{path}.weight"]
        expected[component][f"{path}.weight"] = (weight.float() + 0.6 * delta_of(tensors, name)).to(weight.dtype)
    for component, want in expected.items():
        got = load_file(str(out / FILES[component]))
        assert list(got) == list(want)
        original = load_file(str(folder / FILES[component]))
        changed = 0
        for key, tensor in got.items():
            if torch.equal(want[key], original[key]):
                assert torch.equal(tensor, original[key]), key
            else:
                torch.testing.assert_close(tensor, want[key], rtol=1e-5, atol=1e-5)
                changed += 1
        assert changed == sum(c == component for c, _, _ in modules.values()) > 0
    for path in folder.rglob("*"):
        if path.is_file() and path.relative_to(folder).as_posix() not in FILES.values():
            assert (out / path.relative_to(folder)).read_bytes() == path.read_bytes(), path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")], "no temp folder left"
