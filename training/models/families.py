"""What differs between base-model families, in one table.

The loop never branches on a family name: it asks the family object (or the model: a second text encoder means
SDXL's dual-encoder conditioning). ``family_for`` (kohya's two SD flags) never returns SDXL: detection does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CONFIG_ROOT = ASSETS / "models"
TOKENIZER_DIR = ASSETS / "clip_tokenizer"


@dataclass(frozen=True)
class Family:
    name: str                      # "sd1" | "sd2" | "sd2-v" | "sdxl"
    v2: bool                       # kohya's --v2: OpenCLIP-H text encoder, linear projections
    v_parameterization: bool       # v-prediction instead of epsilon
    config_dir: Path               # config-only diffusers folder for offline single-file loading
    te_prefixes: tuple[str, ...]   # kohya key prefix per text encoder, in order
    base_model_version: str        # ss_base_model_version
    modelspec_architecture: str    # modelspec.architecture (without the "/lora" suffix)
    default_resolution: int
    tokenizer_pad: str             # "<|endoftext|>" for CLIP-L, "!" for OpenCLIP tokenizers (first tokenizer)
    unet_sgm_names: bool = False   # kohya UNet names in the SGM/LDM layout (input_blocks...), read by kohya_names
    tokenizer_2_pad: str | None = None  # second tokenizer's pad (SDXL tokenizer_2, OpenCLIP-bigG: "!"); None: no TE2

    @property
    def prediction_type(self) -> str:
        return "v_prediction" if self.v_parameterization else "epsilon"


SD1 = Family("sd1", False, False, CONFIG_ROOT / "sd1", ("lora_te",), "sd_v1", "stable-diffusion-v1", 512,
             "<|endoftext|>")
SD2 = Family("sd2", True, False, CONFIG_ROOT / "sd2", ("lora_te",), "sd_v2", "stable-diffusion-v2-512", 512, "!")
SD2_V = Family("sd2-v", True, True, CONFIG_ROOT / "sd2-v", ("lora_te",), "sd_v2_v", "stable-diffusion-v2-768-v",
               768, "!")

# SDXL base 1.0: CLIP-L (TE1, pads with <|endoftext|>) + OpenCLIP-bigG (TE2, pads with "!"), SGM-named UNet LoRA.
SDXL = Family("sdxl", False, False, CONFIG_ROOT / "sdxl", ("lora_te1", "lora_te2"), "sdxl_base_v1-0",
              "stable-diffusion-xl-v1-base", 1024, "<|endoftext|>", unet_sgm_names=True, tokenizer_2_pad="!")

FAMILIES = {f.name: f for f in (SD1, SD2, SD2_V, SDXL)}


def family_for(v2: bool, v_parameterization: bool) -> Family:
    """The family kohya's two flags describe (SD1 with v-prediction is rare but exists: kohya's ``sd_v1_v``)."""
    if not v2:
        return SD1 if not v_parameterization else Family(
            "sd1-v", False, True, CONFIG_ROOT / "sd1", ("lora_te",), "sd_v1_v", "stable-diffusion-v1", 512,
            "<|endoftext|>")
    return SD2_V if v_parameterization else SD2
