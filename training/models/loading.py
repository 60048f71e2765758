"""Load an SD base model offline: a diffusers folder, a single ``.safetensors``/``.ckpt`` file, or a hub id.

Single files are read once, safely (``read_checkpoint``), and the already-read state dict is handed to diffusers'
per-component single-file loaders with a bundled config-only folder (``assets/models/<family>``). That is what
``StableDiffusionPipeline.from_single_file(path, config=...)`` does internally, but the pipeline entry point only
takes a path and would ``torch.load`` a ``.ckpt`` itself; passing the dict keeps one read and our safe unpickler for
both formats, and never consults the hub. The tokenizer is built from ``assets/clip_tokenizer`` with the family's
pad token (SD1 ``<|endoftext|>``, SD2 ``!``), so nothing is fetched by hub id either.

Family choice: detected from keys/shapes (``detect.py``). kohya's ``v2`` flag decides only where detection cannot
(an unrecognised layout); a flag that contradicts what the file clearly is is refused, because loading would fail
later with a shape error anyway. v-prediction: the ``v_parameterization``
flag if given, else a diffusers folder's scheduler ``prediction_type``, else epsilon (a single SD2 file is assumed to
be 512-px epsilon; 768-v files need ``v_parameterization = true``, exactly as in kohya).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import SingleFileComponentError
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.contract.errors import UserError
from training.models.checkpoint import read_checkpoint
from training.models.detect import family_from_folder, family_from_shapes, folder_prediction_type, read_key_shapes
from training.models.families import SDXL, TOKENIZER_DIR, Family, family_for

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
HUB_CONFIG_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*.json"]


@dataclass
class BaseModel:
    family: Family
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler  # training noise schedule: the base model's betas, prediction_type per family
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's OpenCLIP-bigG; None for SD1/SD2
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 is not None else [])

    @property
    def tokenizers(self) -> list[CLIPTokenizer]:
        return [self.tokenizer] + ([self.tokenizer_2] if self.tokenizer_2 is not None else [])


def load_base_model(path_or_id: str, v2: bool | None = None, v_parameterization: bool | None = None) -> BaseModel:
    """Load UNet, VAE, text encoder(s) (fp32), tokenizer(s) and training scheduler of an SD1.x/SD2.x/SDXL model."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return load_folder(path, v2, v_parameterization)
    if path.is_file():
        detected, state = _detect_file(path)
        family = choose_family(str(path), detected, v2, v_parameterization)
        return load_single_file(path, family, state=state)
    if _looks_like_path(path_or_id):
        raise UserError(f"{path_or_id}: base model not found (no such file or folder)")
    return load_hub(path_or_id, v2, v_parameterization)


def choose_family(where: str, detected: str | None, v2: bool | None, v_parameterization: bool | None,
                  folder_prediction: str | None = None) -> Family:
    """Combine detection with kohya's flags; refuse contradictions the user cannot have meant."""
    if detected == "sdxl":
        if v2:
            raise UserError(f"{where}: this is an SDXL model but v2 = true; remove v2")
        if v_parameterization or folder_prediction == "v_prediction":
            raise UserError(f"{where}: v-prediction SDXL models are not supported yet; use an epsilon SDXL model")
        return SDXL
    if detected is None and v2 is None:
        raise UserError(f"{where}: cannot tell whether this is SD1.x or SD2.x; set v2 = true or false")
    is_v2 = detected == "sd2" if detected is not None else bool(v2)
    if v2 is not None and v2 != is_v2:
        what = "SD2.x (OpenCLIP text encoder)" if is_v2 else "SD1.x (CLIP-L text encoder)"
        raise UserError(f"{where}: this is an {what} model but v2 = {str(v2).lower()}; remove v2 or set it to "
                        f"{str(is_v2).lower()}")
    if v_parameterization is None:
        v_parameterization = folder_prediction == "v_prediction"
    return family_for(is_v2, v_parameterization)


def load_single_file(path: Path, family: Family, config_dir: Path | None = None,
                     state: dict[str, torch.Tensor] | None = None) -> BaseModel:
    """Build the components from an LDM-layout single file, fully offline.

    ``state`` is the file's already-read state dict (saves a second read of a pickle); ``config_dir`` replaces the
    bundled ``family.config_dir`` (tests pass a tiny model's own configs).
    """
    where = str(path)
    state = read_checkpoint(path) if state is None else state
    config = str(config_dir or family.config_dir)
    # No torch_dtype: diffusers then casts each tensor to the (fp32) parameter it fills, whereas torch_dtype adds a
    # model.to() that logs a spurious "keep in float32" warning in diffusers 0.42. _check_loaded enforces fp32.
    common = {"config": config, "local_files_only": True}
    part = "UNet"  # names the component that failed: "does not seem to contain a valid CLIP model" alone is vague
    try:
        unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
        part = "VAE"
        vae = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
        part = "text encoder"
        text_encoder = _text_encoder_from_ldm(CLIPTextModel, state, config, "text_encoder")
        text_encoder_2 = None
        if family.tokenizer_2_pad is not None:
            part = "text encoder 2"
            text_encoder_2 = _text_encoder_from_ldm(CLIPTextModelWithProjection, state, config, "text_encoder_2")
    # shape mismatch, missing component (diffusers' SingleFileComponentError is a bare Exception): wrong/partial file
    except (ValueError, RuntimeError, KeyError, SingleFileComponentError) as e:
        raise UserError(f"{where}: does not load as {family.name}: {part} ({_first_line(e)})") from e
    parts = (("UNet", unet), ("VAE", vae), ("text encoder", text_encoder), ("text encoder 2", text_encoder_2))
    for part, model in parts:
        if model is not None:
            _check_loaded(where, part, model)
    scheduler = training_scheduler(Path(config), family)
    tokenizer_2 = build_tokenizer(family, second=True) if text_encoder_2 is not None else None
    return BaseModel(family, unet, vae, text_encoder, build_tokenizer(family), scheduler, text_encoder_2, tokenizer_2)


def load_folder(folder: Path, v2: bool | None = None, v_parameterization: bool | None = None,
                source: str | None = None) -> BaseModel:
    """A diffusers folder; ``source`` (a hub id) is where the weights come from when ``folder`` holds configs only."""
    family = choose_family(str(folder), family_from_folder(folder), v2, v_parameterization,
                           folder_prediction_type(folder))
    root = source or str(folder)
    common = {"torch_dtype": torch.float32, "local_files_only": source is None}
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **common)
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=source is None)
        text_encoder_2 = tokenizer_2 = None
        if family.tokenizer_2_pad is not None:
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2", **common)
            tokenizer_2 = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2",
                                                        local_files_only=source is None)
    except OSError as e:
        raise UserError(f"{root}: incomplete diffusers model ({_first_line(e)})") from e
    return BaseModel(family, unet, vae, text_encoder, tokenizer, training_scheduler(folder, family), text_encoder_2,
                     tokenizer_2)


def load_vae(path_or_id: str, family: Family) -> AutoencoderKL:
    """A replacement VAE (kohya's ``vae``): a single ``.safetensors``/``.ckpt`` file, read with the family's bundled
    VAE config, or a diffusers folder (a whole model or just its ``vae``), local only."""
    path = Path(path_or_id).expanduser()
    try:
        if path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").is_file() else None
            vae = AutoencoderKL.from_pretrained(str(path), subfolder=sub, torch_dtype=torch.float32,
                                                local_files_only=True)
        elif path.is_file():
            state = read_checkpoint(path)
            # A bare LDM VAE gets the prefix diffusers' converter looks for; a diffusers-layout file (a folder's
            # diffusion_pytorch_model.safetensors) loads as is: prefixing it left every weight on the meta device.
            if not any(k.startswith(("first_stage_model.", "encoder.down_blocks.")) for k in state):
                state = {f"first_stage_model.{k}": v for k, v in state.items()}
            vae = AutoencoderKL.from_single_file(state, config=str(family.config_dir), subfolder="vae",
                                                 local_files_only=True)
        else:
            raise UserError(f"vae {path_or_id}: no such file or folder")
    except (OSError, ValueError, RuntimeError, KeyError, SingleFileComponentError) as e:  # no VAE keys at all: SFCE
        raise UserError(f"vae {path_or_id}: not a VAE for {family.name} ({_first_line(e)})") from e
    _check_loaded(str(path), "VAE", vae)
    return vae


def load_hub(repo_id: str, v2: bool | None = None, v_parameterization: bool | None = None) -> BaseModel:
    """A hub id works only online or when already cached; offline misses become a UserError with the fix."""
    from huggingface_hub import snapshot_download

    try:
        configs = Path(snapshot_download(repo_id, allow_patterns=HUB_CONFIG_PATTERNS))
        return load_folder(configs, v2, v_parameterization, source=repo_id)
    except UserError:
        raise
    except Exception as e:  # offline cache miss, unknown repo, no network, gated repo ...
        raise UserError(f"{repo_id}: not a local file or folder, and the model hub could not provide it "
                        f"({_first_line(e)}); download the model or give a local path") from e


def training_scheduler(config_dir: Path, family: Family) -> DDPMScheduler:
    """DDPM with the base model's own betas (whatever sampler class its folder names); prediction type per family."""
    config = DDPMScheduler.load_config(str(config_dir), subfolder="scheduler")
    return DDPMScheduler.from_config(config, prediction_type=family.prediction_type)


def with_zero_terminal_snr(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The same schedule with its betas rescaled so the last timestep's SNR is zero (alphas_cumprod[-1] == 0: pure
    noise, as at the start of sampling). Only a v-prediction model can learn that step: its epsilon target is the
    input itself there."""
    return DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True)


def build_tokenizer(family: Family, second: bool = False) -> CLIPTokenizer:
    """The CLIP BPE tokenizer from the bundled vocabulary, padded as the family's original tokenizer pads
    (``second``: SDXL's tokenizer_2, same vocabulary, pads with "!")."""
    pad = family.tokenizer_2_pad if second else family.tokenizer_pad
    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"),
                         pad_token=pad, model_max_length=77)


def _text_encoder_from_ldm(cls: type, state: dict[str, torch.Tensor], config: str, subfolder: str):
    """diffusers' own LDM -> CLIP conversion: CLIP-L layout (SD1, SDXL TE1), fused OpenCLIP layout (SD2, SDXL TE2
    with its text projection); diffusers picks the SDXL encoder whose width matches the config."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    return create_diffusers_clip_model_from_ldm(cls, state, subfolder=subfolder, config=config,
                                                torch_dtype=torch.float32, local_files_only=True)


def _check_loaded(where: str, part: str, model: torch.nn.Module) -> None:
    """diffusers silently leaves parameters absent from the file on the meta device; a partial file must not train.
    Also guarantees fp32 weights whatever the file's dtype (the loop casts later)."""
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise UserError(f"{where}: {part} weights missing from the file ({len(missing)} tensors, e.g. {missing[0]})")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()


def _detect_file(path: Path) -> tuple[str | None, dict[str, torch.Tensor] | None]:
    """Detected family (None: unrecognised, kohya's ``v2`` decides) and, for pickles, the state dict already read.

    A ``.safetensors`` header is enough to tell the family, before any weights are read.
    """
    suffix = path.suffix.lower()
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise UserError(f"{path}: unknown model file type; use a .safetensors or .ckpt file or a diffusers folder")
    if suffix == ".safetensors":
        return family_from_shapes(read_key_shapes(path)), None
    state = read_checkpoint(path)
    return family_from_shapes({k: v.shape for k, v in state.items()}), state


def _looks_like_path(text: str) -> bool:
    """Hub ids are ``org/name``; anything with a suffix, a leading ./ ~ / or more slashes is a (missing) path."""
    return (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
            or text.lower().endswith(SINGLE_FILE_SUFFIXES))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]
