"""Shared by the LoRA tools tests: tiny single-file checkpoints in the original LDM/SGM layout (built from the tiny
diffusers pipelines by tests/ldm_convert.py) and kohya LoRA files written here from random factors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ldm_convert import diffusers_to_ldm
from safetensors.torch import save_file
from timing import scaled
from tiny_models import build_tiny_pipeline

from training.lora_files.names import canonical_name, target_paths
from training.models.families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
TE_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_LEAVES = ("to_q", "to_k", "to_v", "to_out.0")


class Tiny:
    """A tiny pipeline, its LDM checkpoint on disk and the kohya names of its modules."""

    def __init__(self, family: str, folder: Path):
        self.family = family
        self.pipe = build_tiny_pipeline(family)
        self.text_encoders = [self.pipe.text_encoder] + ([self.pipe.text_encoder_2] if family == "sdxl" else [])
        state = diffusers_to_ldm(self.pipe)
        # UNet and text encoders in fp16, the VAE in fp32: the merge must keep each tensor's own dtype.
        self.state = {k: v if k.startswith("first_stage_model.") else v.half() for k, v in state.items()}
        self.path = folder / f"{family}.safetensors"
        save_file(self.state, str(self.path), metadata={"format": "pt", "note": "tiny"})

    def modules(self, leaves=UNET_LEAVES + TE_LEAVES, conv: bool = False) -> dict[str, torch.nn.Module]:
        """kohya name -> module, for the attention projections (and the resnets' conv1 with ``conv``)."""
        family = FAMILIES[self.family]
        out = {}
        parts = [("unet", self.pipe.unet), *enumerate(self.text_encoders)]
        for component, model in parts:
            for path in target_paths(model):
                leaf_ok = path.endswith(tuple("." + leaf for leaf in leaves))
                if leaf_ok or (conv and component == "unet" and path.endswith("resnets.0.conv1")):
                    name = canonical_name(component, path, family, model, len(self.text_encoders))
                    out[name] = model.get_submodule(path)
        return out


def random_lora(modules: dict[str, torch.nn.Module], rank: int, alpha: float, seed: int,
                family: str | None = None) -> dict[str, torch.Tensor]:
    """Random fp16 kohya factors for every module (conv modules get LoCon's [r,in,kh,kw] / [out,r,1,1])."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in modules.items():
        weight = module.weight
        if weight.ndim == 4:
            down = torch.randn(rank, *weight.shape[1:], generator=gen) * 0.2
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * 0.2
        else:
            down = torch.randn(rank, weight.shape[1], generator=gen) * 0.2
            up = torch.randn(weight.shape[0], rank, generator=gen) * 0.2
        out[f"{name}.lora_down.weight"] = down.half()
        out[f"{name}.lora_up.weight"] = up.half()
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float16)
    return out


def save_lora_file(path: Path, tensors: dict[str, torch.Tensor], family: str | None = None) -> Path:
    meta = {}
    if family:
        fam = FAMILIES[family]
        meta = {"ss_base_model_version": fam.base_model_version, "ss_v2": str(fam.v2),
                "ss_network_module": "networks.lora"}
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """``tiny_ckpt("sd1")``: a Tiny built once per family per session."""
    made: dict[str, Tiny] = {}

    def get(family: str) -> Tiny:
        if family not in made:
            made[family] = Tiny(family, tmp_path_factory.mktemp(f"ckpt_{family}"))
        return made[family]
    return get


def delta_of(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """(alpha/r) * up @ down of one module, written here from the file's tensors (float32), shaped as the weight."""
    down = tensors[f"{name}.lora_down.weight"].float()
    up = tensors[f"{name}.lora_up.weight"].float()
    rank = down.shape[0]
    alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else rank
    return (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])


def module_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted({k.split(".")[0] for k in tensors})


def run_tools(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m training.tools ARGS`` as a user runs it, from the repository root."""
    return subprocess.run([sys.executable, "-m", "training.tools", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=scaled(timeout))


def lycoris_lora(modules: dict[str, torch.nn.Module], algo: str, rank: int, alpha: float, seed: int
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random LoHa or LoKr factors (file tensors, fp16), and each module's delta written here from the factors, shaped
    like its weight: LoHa (alpha/r) * (w1a @ w1b) * (w2a @ w2b), a conv's factors flat [r, in*kh*kw] as LyCORIS
    writes them; LoKr (alpha/r) * kron(w1, w2a @ w2b), Linear modules only."""
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for name, module in modules.items():
        out, fan_in = module.weight.shape[0], module.weight[0].numel()
        def rand(*shape):
            return (torch.randn(*shape, generator=gen) * 0.3).half()
        if algo == "loha":
            parts = {"hada_w1_a": rand(out, rank), "hada_w1_b": rand(rank, fan_in),
                     "hada_w2_a": rand(out, rank), "hada_w2_b": rand(rank, fan_in)}
            f = {k: v.float() for k, v in parts.items()}
            delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
        else:  # w1 a small whole factor, w2 decomposed: the layout LyCORIS writes for a factor of 4
            parts = {"lokr_w1": rand(4, 4), "lokr_w2_a": rand(out // 4, rank), "lokr_w2_b": rand(rank, fan_in // 4)}
            f = {k: v.float() for k, v in parts.items()}
            delta = torch.kron(f["lokr_w1"], f["lokr_w2_a"] @ f["lokr_w2_b"])
        parts["alpha"] = torch.tensor(alpha).half()
        tensors.update({f"{name}.{part}": value for part, value in parts.items()})
        deltas[name] = (delta * (alpha / rank)).reshape(module.weight.shape)
    return tensors, deltas
