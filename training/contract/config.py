"""TrainConfig: every training option, flat, under kohya-ss/sd-scripts names where kohya has one.

One model feeds the CLI, the TOML files, the LoRA metadata and the options table in docs/options.md. Each field
carries its default, its limits, the TOML section it is saved under and a one-line reason (the UI's tooltip).
Torch-free on purpose: the UI imports this module.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from training.contract.network import KOHYA_LORA, LYCORIS, NetworkArgsError, NetworkSpec, parse_network, split_args

SCHEMA_VERSION = 1
SECTIONS = ("model", "dataset", "network", "optimizer", "training", "sample", "save", "logging")


def opt(default: Any, section: str, title: str, why: str, **limits: Any) -> Any:
    """A config field: default, TOML section, the friendly label the form shows beside the key, the reason shown
    to users, and pydantic limits."""
    return Field(default, title=title, description=why, json_schema_extra={"section": section}, **limits)


Optimizer = Literal["AdamW", "AdamW8bit", "Prodigy", "Lion", "Adafactor"]
Scheduler = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
    "piecewise_constant", "cosine_with_min_lr", "warmup_stable_decay", "inverse_sqrt", "adafactor",
]
# Optimizer arguments that exist only in transformers' Adafactor (kohya's): asking for one of them trains with it.
ADAFACTOR_TRANSFORMERS_ARGS = ("relative_step", "scale_parameter", "warmup_init", "clip_threshold", "decay_rate",
                               "beta1")


def split_literal_args(value: Any) -> list[str]:
    """optimizer_args / lr_scheduler_args as kohya takes them: a TOML list of ``key=value`` strings, or one line of
    them separated by spaces, where brackets and quotes keep a value together (``betas=(0.9, 0.99)``)."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    if not isinstance(value, str):
        raise ValueError("must be a list of 'key=value' strings")
    args, current, depth, quote = [], "", 0, ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char.isspace() and depth <= 0:
            args.append(current)
            current = ""
            continue
        current += char
    args.append(current)
    return [_unquoted(a.strip().rstrip(",")) for a in args if a.strip().rstrip(",")]


def _unquoted(arg: str) -> str:
    """A whole ``key=value`` in shell quotes (as the form writes a list back: ``'betas=(0.9, 0.99)'``) unquoted;
    a key never starts with a quote, so anything else is left as typed (``step_rules='1:3,0.1'`` keeps its quotes,
    which the literal needs)."""
    if arg[:1] in ("'", '"'):
        try:
            parts = shlex.split(arg)
        except ValueError:
            return arg
        return parts[0] if len(parts) == 1 else arg
    return arg


def literal_pairs(args: list[str]) -> dict[str, Any]:
    """``{key: value}`` of kohya's ``key=value`` args, each value read as a Python literal (numbers, True/False,
    quoted strings, tuples), as sd-scripts reads them; a bad one is a ValueError naming it."""
    import ast

    pairs: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"'{arg}': write key=value, e.g. weight_decay=0.01")
        if key in pairs:
            raise ValueError(f"'{key}' is given twice")
        try:
            pairs[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"'{arg}': the value must be a Python literal: a number, True/False, a quoted string "
                             f"or a tuple such as (0.9, 0.999)") from None
    return pairs


def parse_face_crop_range(value: Any) -> tuple[float, float] | None:
    """``face_crop_aug_range`` as (min, max) face sizes per crop side: from '2.0,4.0', [2.0, 4.0] or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError("must be two numbers 'MIN,MAX', e.g. '2.0,4.0'") from None
    if not 0 < low <= high:
        raise ValueError("needs 0 < MIN <= MAX, e.g. '2.0,4.0'")
    return low, high


def pixel_augmentations(options: Any, bucketing: bool) -> list[str]:
    """The settings of ``options`` (a TrainConfig or a subset's options) that change an image's pixels each step,
    so a latent cached once cannot stand for it. The face crop acts only without buckets (as in kohya)."""
    names = ("color_aug", "random_crop") + (() if bucketing else ("face_crop_aug_range",))
    return [name for name in names if getattr(options, name, None)]


def uncacheable_message(changing: list[str], where: str = "") -> str:
    """The one line that refuses cache_latents with augmentations that change the pixels each step."""
    verb = "changes" if len(changing) == 1 else "change"
    return (f"cache_latents = true with {' and '.join(changing)}{where}: {verb} the image every step, which a "
            "latent encoded once cannot hold; set cache_latents = false, or turn "
            f"{'it' if len(changing) == 1 else 'them'} off")


class TrainConfig(BaseModel):
    """Every training option. Invalid values are refused before anything loads."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # NaN is never a setting

    # --- model
    pretrained_model_name_or_path: str = opt(
        "", "model", "Base model",
        "Base model: a diffusers folder, a single .safetensors/.ckpt file, or a hub id when online.")
    v2: bool | None = opt(
        None, "model", "SD2.x model",
        "SD2.x base (OpenCLIP text encoder). Leave unset to detect it from the checkpoint.")
    v_parameterization: bool | None = opt(
        None, "model", "v-prediction",
        "v-prediction base (SD2.x 768-v). Leave unset to read it from the model's scheduler.")
    clip_skip: int = opt(
        1, "model", "CLIP skip",
        "Use the text encoder's n-th last layer: 2 for NovelAI-lineage anime SD1.5 models, else 1. "
        "SDXL always uses the penultimate layer (1 and 2 are the same there).", ge=1, le=12)
    vae: str | None = opt(
        None, "model", "Separate VAE",
        "A separate VAE (.safetensors file or diffusers folder) to encode images, e.g. an fp16-fixed "
        "SDXL VAE; unset uses the base model's.")

    # --- dataset
    train_data_dir: str = opt(
        "", "dataset", "Dataset folder",
        "Folder of images with .txt captions; subfolders named '10_name' repeat their images 10x.")
    reg_data_dir: str = opt(
        "", "dataset", "Regularisation folder",
        "Folder of regularisation images in '<repeats>_<class>' subfolders (DreamBooth prior preservation): "
        "each epoch mixes in as many of them as training images; empty: none.")
    prior_loss_weight: float = opt(
        1.0, "dataset", "Regularisation loss weight",
        "Multiplies the loss of each regularisation image (1 weighs them like training images).", ge=0, le=100)
    dataset_config: str | None = opt(
        None, "dataset", "Dataset config file",
        "A kohya dataset TOML ([general], [[datasets]], [[datasets.subsets]]): folders with their own repeats, "
        "captions and augmentation; replaces train_data_dir and reg_data_dir.")
    caption_extension: str = opt(".txt", "dataset", "Caption file extension",
        "Extension of the caption file next to each image.")
    resolution: str = opt(
        "512", "dataset", "Resolution",
        "Training size 'W' or 'W,H'; bucket area is W*H. 512 for SD1.5, 768 for SD2 768-v.")
    enable_bucket: bool = opt(
        True, "dataset", "Aspect-ratio buckets", "Group images by aspect ratio instead of cropping everything square.")
    min_bucket_reso: int = opt(256, "dataset", "Smallest bucket side",
        "Smallest bucket side in pixels.", ge=64, le=4096)
    max_bucket_reso: int = opt(1024, "dataset", "Largest bucket side", "Largest bucket side in pixels.", ge=64, le=8192)
    bucket_reso_steps: int = opt(64, "dataset", "Bucket side step",
        "Bucket sides are multiples of this (64 is safe for every UNet).",
                                 ge=8, le=256)
    shuffle_caption: bool = opt(
        False, "dataset", "Shuffle caption tags", "Shuffle comma-separated tags each step (for booru-tag captions).")
    keep_tokens: int = opt(
        0, "dataset", "Tags kept in place",
        "Keep this many leading tags in place when shuffling (e.g. the trigger word).", ge=0, le=75)
    caption_dropout_rate: float = opt(
        0.0, "dataset", "Caption dropout",
        "Share of steps trained with an empty caption (helps unconditional guidance).", ge=0, le=1)
    flip_aug: bool = opt(
        False, "dataset", "Horizontal flips",
        "Random horizontal flips: doubles variety, wrong for asymmetric subjects or text.")
    color_aug: bool = opt(
        False, "dataset", "Colour jitter",
        "A third of the steps shift an image's hue a little or change its gamma (kohya's weak colour "
        "augmentation); needs cache_latents off.")
    random_crop: bool = opt(
        False, "dataset", "Random crop",
        "Crop a random window of the resized image instead of the centre, a new one each epoch; needs "
        "cache_latents off.")
    face_crop_aug_range: str | None = opt(
        None, "dataset", "Face crop range",
        "'MIN,MAX', e.g. '2.0,4.0': crop around the face so the crop's short side is MIN to MAX face sizes; the face "
        "comes from file names ending _cx_cy_w_h. Only with enable_bucket off (as kohya); needs cache_latents off.")
    caption_separator: str = opt(
        ",", "dataset", "Tag separator", "The text between tags when tags are shuffled, dropped or kept.",
        min_length=1)
    keep_tokens_separator: str = opt(
        "", "dataset", "Keep-tags separator",
        "E.g. '|||': tags before it (and after a second one) stay in place; only the part between is shuffled "
        "and dropped. Replaces keep_tokens for captions that contain it.")
    secondary_separator: str | None = opt(
        None, "dataset", "Tag group separator",
        "E.g. ';;;': 'sky;;;cloud' is one tag when shuffling and dropping, then trained as 'sky,cloud'.")
    caption_prefix: str | None = opt(
        None, "dataset", "Caption prefix",
        "Text put before every caption (with a space), before shuffling: counts toward keep_tokens.")
    caption_suffix: str | None = opt(
        None, "dataset", "Caption suffix",
        "Text put after every caption (with a space), before shuffling.")
    enable_wildcard: bool = opt(
        False, "dataset", "Caption wildcards",
        "'{red|blue} hair' trains on one of the choices each step; write {{ and }} for literal braces.")
    caption_tag_dropout_rate: float = opt(
        0.0, "dataset", "Tag dropout",
        "Chance that each tag (after the kept ones) is left out of a step's caption.", ge=0, le=1)
    caption_dropout_every_n_epochs: int = opt(
        0, "dataset", "Empty captions every N epochs",
        "Every N-th epoch trains all images with an empty caption; 0 never.", ge=0)
    token_warmup_min: int = opt(
        1, "dataset", "Tags at the start",
        "With token_warmup_step: how many tags (after the kept ones) the first step's captions keep.", ge=0)
    token_warmup_step: float = opt(
        0.0, "dataset", "Tag warm-up steps",
        "Captions grow from token_warmup_min tags to all of them by this step (below 1: that share of the run); "
        "0 off.", ge=0)
    cache_latents: bool = opt(
        True, "dataset", "Cache latents", "Encode images with the VAE once instead of every step: faster, less memory.")
    cache_latents_to_disk: bool = opt(
        False, "dataset", "Cache latents on disk",
        "Also keep cached latents on disk (.latent_cache beside the run folder) for later runs.")
    cache_text_encoder_outputs: bool = opt(
        True, "dataset", "Cache text-encoder outputs",
        "Encode each caption once when the text encoders are frozen and captions do not change between steps (no "
        "shuffle, tag dropout, token warm-up or wildcards); the encoders then leave the GPU (saves ~1.6 GB on SDXL).")
    validation_split: float = opt(
        0.0, "dataset", "Validation share",
        "Share of images held out for the validation loss; 0 uses a fixed training subset.",
        ge=0, le=0.5)
    validation_every_n_steps: int | None = opt(
        None, "dataset", "Validate every N steps",
        "Steps between validation-loss checks; unset picks about 20 points per run, 0 turns off.",
        ge=0)

    # --- network
    network_dim: int = opt(16, "network", "Rank", "LoRA rank: capacity and file size grow with it.", ge=1, le=1024)
    network_alpha: float = opt(
        8.0, "network", "Alpha",
        "Strength scale is alpha / rank (kohya convention); half the rank is a common choice.", gt=0)
    network_dropout: float = opt(0.0, "network", "LoRA dropout",
        "Dropout inside the LoRA layers (regularisation).", ge=0, lt=1)
    network_module: str = opt(
        KOHYA_LORA, "network", "Network module",
        f"'{KOHYA_LORA}' (kohya's LoRA; LoCon with a conv rank) or '{LYCORIS}' (LoCon, LoHa, LoKr, DoRA chosen by "
        "network_args' algo).")
    network_args: list[str] = opt(
        [], "network", "Network arguments",
        "kohya's network_args: key=value settings such as algo=loha, preset=full, conv_dim=8, dora_wd=True.")
    conv_dim: int | None = opt(
        None, "network", "Conv rank",
        "Rank of the adapters on the UNet's 3x3 convolutions (LoCon): they learn texture and style attention "
        "misses. Unset: none for networks.lora, the rank for LyCORIS.", ge=0, le=1024)
    conv_alpha: float | None = opt(
        None, "network", "Conv alpha", "Alpha of the conv adapters (unset: network_alpha).", gt=0)
    network_train_unet_only: bool = opt(
        False, "network", "Train UNet only",
        "Train only the UNet; leaves the text encoder untouched (and lets its outputs be cached).")
    network_weights: str | None = opt(
        None, "network", "Start from LoRA file",
        "Start from an existing kohya-format LoRA file of the same rank (another rank: turn on Ranks from that file).")
    dim_from_weights: bool = opt(
        False, "network", "Ranks from that file",
        "Take each module's rank and alpha from the network_weights file, so a LoRA of any rank can be continued.")

    # --- optimizer
    optimizer_type: Optimizer = opt(
        "AdamW", "optimizer", "Optimizer",
        "AdamW is the reference; AdamW8bit saves memory; Prodigy finds its own step size.")
    learning_rate: float = opt(1e-4, "optimizer", "Learning rate",
        "Learning rate for parts without their own.", gt=0, le=10)
    unet_lr: float | None = opt(None, "optimizer", "UNet learning rate",
        "UNet learning rate (unset: learning_rate).", gt=0, le=10)
    text_encoder_lr: float | list[float] | None = opt(
        None, "optimizer", "Text-encoder learning rate",
        "Text-encoder learning rate, usually a fifth to half of the UNet's (unset: learning_rate). "
        "SDXL: one value for both encoders, or two ('TE1, TE2'); 0 leaves that encoder untrained.")
    lr_scheduler: Scheduler = opt("cosine", "optimizer", "Learning-rate schedule",
        "How the learning rate changes over the run.")
    lr_warmup_steps: float = opt(
        0, "optimizer", "Warm-up",
        "Warm-up steps (a value below 1 is a share of all steps), avoids early spikes.", ge=0)
    lr_scheduler_num_cycles: int = opt(1, "optimizer", "Restart cycles",
        "Restarts for cosine_with_restarts.", ge=1, le=100)
    max_grad_norm: float = opt(1.0, "optimizer", "Gradient clipping",
        "Clip gradients to this norm (0 turns clipping off).", ge=0)
    # Our defaults stay in force for what optimizer_args leaves out: weight_decay 0.01 (Adafactor 0), Prodigy with
    # safeguard_warmup and use_bias_correction on, Adafactor with fixed learning rates (relative_step=False).
    optimizer_args: list[str] = opt(
        [], "optimizer", "Optimizer arguments",
        "kohya's optimizer_args: key=value settings passed to the optimizer, e.g. weight_decay=0.1 betas=(0.9,0.99) "
        "d_coef=2 relative_step=True; unset keys keep this trainer's defaults (weight_decay 0.01).")
    lr_scheduler_args: list[str] = opt(
        [], "optimizer", "Schedule arguments",
        "kohya's lr_scheduler_args: key=value settings passed to the schedule, e.g. step_size=100 gamma=0.5 for "
        "lr_scheduler_type StepLR, or step_rules='1:100,0.1' for piecewise_constant.")
    lr_scheduler_type: str = opt(
        "", "optimizer", "Custom schedule class",
        "A schedule class to use instead of lr_scheduler, as module.Class (a bare name is taken from "
        "torch.optim.lr_scheduler), built with lr_scheduler_args; empty uses lr_scheduler.")
    lr_scheduler_power: float = opt(
        1.0, "optimizer", "Polynomial power",
        "Power of the polynomial schedule's decay: 1 is linear, above 1 drops faster early.", gt=0, le=100)
    lr_scheduler_min_lr_ratio: float | None = opt(
        None, "optimizer", "Minimum LR ratio",
        "Lowest learning rate as a share of the start for cosine_with_min_lr and warmup_stable_decay (unset: 0).",
        ge=0, le=1)
    lr_decay_steps: float = opt(
        0, "optimizer", "Decay steps",
        "warmup_stable_decay's decay length in steps (a value below 1 is a share of all steps).", ge=0)
    lr_scheduler_timescale: int | None = opt(
        None, "optimizer", "Inverse-sqrt timescale",
        "inverse_sqrt's timescale in steps (unset: the warm-up steps).", ge=1)
    scale_weight_norms: float | None = opt(
        None, "optimizer", "Max-norm limit",
        "After each step, scale down any LoRA module whose weight change (up x down x alpha/rank) has a norm above "
        "this (1 is a common value): fewer burnt-in features. LoRA/LoCon only. Unset turns it off.", gt=0)

    # --- training
    train_batch_size: int = opt(1, "training", "Batch size", "Images per step on each GPU.", ge=1, le=256)
    gradient_accumulation_steps: int = opt(
        1, "training", "Gradient accumulation",
        "Steps whose gradients add up before one update: a larger batch without the memory.",
        ge=1, le=1024)
    max_train_steps: int = opt(1600, "training", "Training steps", "Length of the run in optimizer steps.", ge=1)
    max_train_epochs: int | None = opt(
        None, "training", "Training epochs",
        "Length in epochs (one pass over images x repeats); overrides max_train_steps.", ge=1)
    seed: int = opt(42, "training", "Seed",
        "Seed for noise, shuffling and captions: the same seed repeats the run.", ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = opt(
        "bf16", "training", "Mixed precision",
        "bf16 avoids fp16 overflow (NaN); use fp16 on GPUs without bf16 (GTX 10xx/RTX 20xx).")
    gradient_checkpointing: bool = opt(
        False, "training", "Gradient checkpointing",
        "Recompute activations in the backward pass: much less memory, about 25% slower.")
    min_snr_gamma: float | None = opt(
        None, "training", "Min-SNR gamma",
        "Min-SNR loss weighting (5 is the paper's value): steadier training. Unset turns it off.",
        gt=0, le=100)
    noise_offset: float = opt(
        0.0, "training", "Noise offset",
        "Adds a per-channel offset to the noise so the LoRA can learn darker darks (0.05-0.1).",
        ge=0, le=1)
    # --- loss and noise (kohya's names, defaults and order of application: training/run/loss.py)
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = opt(
        "l2", "training", "Loss type",
        "l2 (squared error) is the standard; huber and smooth_l1 weigh outliers less (huber_c sets where).")
    huber_c: float = opt(
        0.1, "training", "Huber c",
        "Where huber/smooth_l1 loss turns from squared to linear; scheduled over timesteps by huber_schedule.",
        gt=0, le=1)
    huber_schedule: Literal["snr", "exponential", "constant"] = opt(
        "snr", "training", "Huber schedule",
        "How huber_c changes with the timestep: snr (large c at low noise), exponential, or constant.")
    huber_scale: float = opt(
        1.0, "training", "Huber scale",
        "Multiplies huber_c in the exponential and constant schedules (kohya's huber_scale).", gt=0, le=100)
    debiased_estimation_loss: bool = opt(
        False, "training", "Debiased estimation loss",
        "Weights each sample's loss by 1/sqrt(SNR) (1/(SNR+1) for v-prediction): less weight on easy, "
        "low-noise timesteps.")
    scale_v_pred_loss_like_noise_pred: bool = opt(
        False, "training", "Scale v-pred loss like noise-pred",
        "v-prediction models only: weights the loss by SNR/(SNR+1) so timesteps count as for epsilon models.")
    v_pred_like_loss: float | None = opt(
        None, "training", "v-pred-like loss",
        "Epsilon models only: adds this much of a v-prediction-like loss (loss x (SNR+1)/SNR). Unset: off.",
        gt=0, le=10)
    zero_terminal_snr: bool = opt(
        False, "training", "Zero terminal SNR",
        "Rescales the noise schedule so the last timestep is pure noise (for v-prediction models: "
        "full darks and brights).")
    noise_offset_random_strength: bool = opt(
        False, "training", "Random noise offset strength",
        "Draws the noise offset's strength between 0 and noise_offset each step.")
    adaptive_noise_scale: float | None = opt(
        None, "training", "Adaptive noise scale",
        "Adds this times the absolute mean of each latent channel to noise_offset (needs noise_offset). "
        "Unset: off.",
        ge=-1, le=1)
    multires_noise_iterations: int | None = opt(
        None, "training", "Multires noise iterations",
        "Adds noise at coarser resolutions too (6-10 is usual): helps learn overall brightness and colour. "
        "Unset or 0: off (kohya_ss writes 0).", ge=0, le=64)
    multires_noise_discount: float = opt(
        0.3, "training", "Multires noise discount",
        "How much each coarser level of multires noise counts (0.1-0.3 usual).", ge=0, le=1)
    ip_noise_gamma: float | None = opt(
        None, "training", "Input perturbation noise",
        "Perturbs the noisy input (not the target) by this much extra noise (around 0.1): a regulariser. "
        "Unset: off.", gt=0, le=1)
    ip_noise_gamma_random_strength: bool = opt(
        False, "training", "Random input perturbation strength",
        "Draws the input perturbation's strength between 0 and ip_noise_gamma each step.")
    min_timestep: int | None = opt(
        None, "training", "Min timestep",
        "Lowest timestep trained (0-999; unset: 0). Higher values skip the fine-detail, low-noise steps.",
        ge=0, le=999)
    max_timestep: int | None = opt(
        None, "training", "Max timestep",
        "Timesteps trained stay below this (1-1000; unset: 1000). Lower values skip composition-level steps.",
        ge=1, le=1000)
    masked_loss: bool = opt(
        False, "training", "Masked loss",
        "Weights the loss per pixel by a mask: from conditioning_data_dir, else the image's alpha (alpha_mask).")
    alpha_mask: bool = opt(
        False, "training", "Alpha channel as mask",
        "Uses each image's transparency as its loss mask: transparent parts are not learned.")
    conditioning_data_dir: str | None = opt(
        None, "training", "Mask folder",
        "Folder of mask images named like the training images (white: learn, black: ignore), for masked_loss.")
    max_data_loader_n_workers: int = opt(
        2, "training", "Data-loader workers",
        "Background processes that load images when latents are not cached.", ge=0, le=64)
    torch_compile: bool = opt(
        False, "training", "torch.compile",
        "Compile the UNet with torch.compile: faster steps after a slow first one per bucket shape (CUDA).")
    dynamo_backend: Literal["inductor", "eager", "aot_eager", "cudagraphs"] = opt(
        "inductor", "training", "Compile backend",
        "torch.compile backend when torch_compile is on: inductor (fast kernels); the others are for debugging.")
    fp8_base: bool = opt(
        False, "training", "fp8 base model",
        "Store the frozen UNet and text-encoder Linear/Conv weights in float8 (half of bf16's memory), upcast "
        "per layer.")
    full_bf16: bool = opt(
        False, "training", "Full bf16",
        "LoRA weights and gradients in bf16 too (AdamW rounds its updates stochastically): less memory.")

    # --- sample
    sample_prompts: str | None = opt(
        None, "sample", "Sample prompts",
        "Prompt file (one a line; kohya options --n --w --h --d --l --s) or prompts split by ';'.")
    sample_every_n_steps: int | None = opt(None, "sample", "Sample every N steps",
        "Make sample images every N steps.", ge=1)
    sample_every_n_epochs: int | None = opt(None, "sample", "Sample every N epochs",
        "Make sample images every N epochs.", ge=1)
    sample_sampler: Literal["ddim", "euler", "euler_a", "dpmsolver++"] = opt(
        "euler_a", "sample", "Sampler", "Sampler for sample images.")

    # --- save
    output_dir: str = opt("", "save", "Output folder (terminal runs)",
        "Run folder: the LoRA files, samples, state and event log go here.")
    output_name: str = opt("lora", "save", "LoRA name",
        "File name of the LoRA (without .safetensors); A1111 shows it as alias.",
                           min_length=1, max_length=200)
    save_precision: Literal["fp16", "bf16", "float"] = opt(
        "fp16", "save", "Saved precision", "Precision of the saved LoRA; fp16 loads everywhere and halves the size.")
    save_every_n_epochs: int | None = opt(None, "save", "Save every N epochs",
        "Also save the LoRA every N epochs.", ge=1)
    save_every_n_steps: int | None = opt(None, "save", "Save every N steps", "Also save the LoRA every N steps.", ge=1)
    save_last_n_epochs: int | None = opt(
        None, "save", "Keep last N epoch saves",
        "With save_every_n_epochs: keep only the newest N per-epoch LoRA files (the final one is always kept).",
        ge=1)
    save_last_n_epochs_state: int | None = opt(
        None, "save", "Keep last N epoch states",
        "Keep only the newest N per-epoch state folders (unset: save_last_n_epochs).", ge=1)
    save_last_n_steps: int | None = opt(
        None, "save", "Keep saves of the last N steps",
        "With save_every_n_steps: delete per-step LoRA files older than this many steps (kohya counts steps here, "
        "not files).", ge=1)
    save_last_n_steps_state: int | None = opt(
        None, "save", "Keep states of the last N steps",
        "Delete per-step state folders older than this many steps (unset: save_last_n_steps).", ge=1)
    save_state: bool = opt(
        False, "save", "Save training state",
        "Save the full training state with each save so the run can be resumed exactly.")
    save_state_on_train_end: bool = opt(
        False, "save", "Save state at the end",
        "Save the training state with the final LoRA (<name>-state) even without save_state, to continue later.")
    save_model_as: str = opt(
        "safetensors", "save", "File format",
        "Format of the saved LoRA: safetensors only (ckpt/pt are pickle files that can run code when opened).")
    training_comment: str | None = opt(
        None, "save", "Training comment", "A note stored in the LoRA file (ss_training_comment).")
    metadata_title: str | None = opt(
        None, "save", "Title", "The model's title in the file's metadata (modelspec.title; unset: output_name).")
    metadata_author: str | None = opt(None, "save", "Author", "Author stored in the file (modelspec.author).")
    metadata_description: str | None = opt(
        None, "save", "Description", "Description stored in the file (modelspec.description).")
    metadata_license: str | None = opt(None, "save", "License", "License stored in the file (modelspec.license).")
    metadata_tags: str | None = opt(
        None, "save", "Tags", "Comma-separated tags stored in the file (modelspec.tags).")
    no_metadata: bool = opt(
        False, "save", "Minimal metadata",
        "Store only what loaders need (base model, network type, rank, alpha, modelspec) and no training details "
        "such as dataset folders or tag counts.")
    resume: str | None = opt(None, "save", "Resume from state",
        "Resume from a saved state folder (<output_name>-...-state).")

    # --- logging
    logging_dir: str | None = opt(None, "logging", "TensorBoard folder",
        "TensorBoard log folder (unset: <output_dir>/logs).")

    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution_text(cls, value: Any) -> str:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution_valid(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
            raise ValueError("must be a size like 512 or '768,512' (width,height)")
        sizes = [int(p) for p in parts]
        if not all(64 <= s <= 4096 and s % 8 == 0 for s in sizes):
            raise ValueError("each side must be a multiple of 8 between 64 and 4096")
        return ",".join(parts)

    @field_validator("text_encoder_lr", mode="before")
    @classmethod
    def _text_encoder_lr_text(cls, value: Any) -> Any:
        """The form and the CLI pass text: '1e-5' or '1e-5, 5e-6' (SDXL's two encoders)."""
        if isinstance(value, str):
            parts = [p.strip() for p in value.strip("[]() ").split(",") if p.strip()]
            if not parts:
                return None
            try:
                numbers = [float(p) for p in parts]
            except ValueError:
                raise ValueError("must be a number, or two numbers 'TE1, TE2' for SDXL") from None
            return numbers[0] if len(numbers) == 1 else numbers
        return value

    @field_validator("text_encoder_lr")
    @classmethod
    def _text_encoder_lr_range(cls, value: float | list[float] | None) -> float | list[float] | None:
        values = value if isinstance(value, list) else [] if value is None else [value]
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            raise ValueError("give one value, or two for SDXL's two text encoders")
        if any(not 0 <= v <= 10 for v in values):
            raise ValueError("each value must be between 0 and 10")
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    @field_validator("network_args", mode="before")
    @classmethod
    def _network_args_text(cls, value: Any) -> list[str]:
        """A TOML list, or the form's and --set's one line of space-separated key=value pairs."""
        try:
            return split_args(value)
        except NetworkArgsError as err:
            raise ValueError(str(err).removeprefix("network_args").lstrip(": ")) from None

    @field_validator("optimizer_args", "lr_scheduler_args", mode="before")
    @classmethod
    def _literal_args_text(cls, value: Any, info: Any) -> list[str]:
        """A TOML list, or the form's and --set's one line of space-separated key=value pairs."""
        return split_literal_args(value)

    @field_validator("optimizer_args", "lr_scheduler_args")
    @classmethod
    def _literal_args_valid(cls, value: list[str]) -> list[str]:
        literal_pairs(value)
        return value

    @field_validator("lr_scheduler_type")
    @classmethod
    def _scheduler_class_path(cls, value: str) -> str:
        value = value.strip()
        if value and not all(part.isidentifier() for part in value.split(".")):
            raise ValueError("must be a class path such as torch.optim.lr_scheduler.StepLR")
        return value

    @field_validator("save_model_as")
    @classmethod
    def _safetensors_only(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "safetensors":
            raise ValueError(f"'{value}' is not written here: LoRAs are saved as safetensors only (ckpt/pt are pickle "
                             f"files that can run code when loaded, diffusers folders are not LoRA files); set "
                             f"save_model_as = \"safetensors\"")
        return value

    @field_validator("caption_extension")
    @classmethod
    def _caption_extension(cls, value: str) -> str:
        if not value.startswith(".") or len(value) < 2 or "/" in value or "\\" in value:
            raise ValueError("must be an extension starting with '.', such as .txt or .caption")
        return value

    @field_validator("face_crop_aug_range", mode="before")
    @classmethod
    def _face_crop_text(cls, value: Any) -> Any:
        """kohya's command line gives '2.0,4.0', its dataset config a list [2.0, 4.0]; both become the text."""
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("face_crop_aug_range")
    @classmethod
    def _face_crop_valid(cls, value: str | None) -> str | None:
        parse_face_crop_range(value)
        return value

    @field_validator("output_name")
    @classmethod
    def _output_name(cls, value: str) -> str:
        if any(c in value for c in '/\\:*?"<>|') or value.strip() != value or value in (".", ".."):
            raise ValueError("must be a plain file name without path separators or any of :*?\"<>|")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ValueError(
                f"min_bucket_reso ({self.min_bucket_reso}) must not exceed max_bucket_reso ({self.max_bucket_reso})")
        return self

    @model_validator(mode="after")
    def _loss_and_noise_consistent(self) -> TrainConfig:
        """The combinations sd-scripts refuses, refused here too (the v-prediction ones wait for the model;
        adaptive_noise_scale without noise_offset is refused by the preflight check, so each numeric field's own
        range stays what the form says)."""
        if self.min_timestep is not None and self.max_timestep is not None and self.min_timestep > self.max_timestep:
            raise ValueError(f"min_timestep ({self.min_timestep}) must not exceed max_timestep ({self.max_timestep})")
        if self.masked_loss and not (self.conditioning_data_dir or self.alpha_mask):
            raise ValueError("masked_loss needs masks: set conditioning_data_dir (a folder of masks named like the "
                             "images) or alpha_mask = true")
        return self

    @model_validator(mode="after")
    def _max_norm_needs_lora(self) -> TrainConfig:
        kind = self.network.kind
        if self.scale_weight_norms is not None and kind not in ("LoRA", "LoCon"):
            raise ValueError(f"scale_weight_norms works on LoRA and LoCon modules (an up x down product), not on "
                             f"{kind}; unset scale_weight_norms or train LoRA/LoCon")
        return self

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        """optimizer_args as {key: value}."""
        return literal_pairs(self.optimizer_args)

    @property
    def lr_scheduler_kwargs(self) -> dict[str, Any]:
        """lr_scheduler_args as {key: value}."""
        return literal_pairs(self.lr_scheduler_args)

    @model_validator(mode="after")
    def _augmentations_need_pixels(self) -> TrainConfig:
        if self.cache_latents and (changing := pixel_augmentations(self, self.enable_bucket)):
            raise ValueError(uncacheable_message(changing))
        return self

    @model_validator(mode="after")
    def _network_valid(self) -> TrainConfig:
        self.network  # noqa: B018 - parsing is the check; it raises on a bad module or arg
        if self.dim_from_weights and not self.network_weights:
            raise ValueError("dim_from_weights = true reads the ranks from network_weights: set network_weights to "
                             "a LoRA file, or turn dim_from_weights off")
        if self.dim_from_weights and self.network_module != KOHYA_LORA:
            raise ValueError(f"dim_from_weights works with network_module = \"{KOHYA_LORA}\" here")
        return self

    @model_validator(mode="after")
    def _fp8_base_without_dora(self) -> TrainConfig:
        if self.fp8_base and self.network.dora_wd:
            raise ValueError("fp8_base = true with DoRA (dora_wd=True): DoRA reads the full-precision base weights "
                             "every step; turn one of them off")
        return self

    # --- derived values: one place computes them so the loop, metadata and UI agree
    @property
    def network(self) -> NetworkSpec:
        """network_module + network_args + conv_dim/conv_alpha resolved (defaults filled in, args checked)."""
        try:
            return parse_network(self.network_module, self.network_args, self.network_dim, self.network_alpha,
                                 self.conv_dim, self.conv_alpha)
        except NetworkArgsError as err:
            raise ValueError(str(err)) from None

    @property
    def resolution_wh(self) -> tuple[int, int]:
        sizes = [int(p) for p in self.resolution.split(",")]
        return (sizes[0], sizes[-1])

    @property
    def effective_unet_lr(self) -> float:
        return self.unet_lr if self.unet_lr is not None else self.learning_rate

    @property
    def text_encoder_lrs(self) -> tuple[float, float]:
        """Learning rates of text encoders 1 and 2 (SD1/SD2 have only the first); 0 means not trained."""
        value = self.text_encoder_lr
        if value is None:
            return (self.learning_rate, self.learning_rate)
        if isinstance(value, list):
            return (value[0], value[-1])
        return (value, value)

    @property
    def effective_text_encoder_lr(self) -> float:
        """Text encoder 1's learning rate (the only one of SD1/SD2)."""
        return self.text_encoder_lrs[0]

    def trained_text_encoders(self, count: int) -> list[int]:
        """Indexes of the model's ``count`` text encoders that get a LoRA (none when the network's preset has no
        text-encoder modules, LyCORIS's unet-transformer-only)."""
        if self.network_train_unet_only or not self.network.trains_text_encoders:
            return []
        return [i for i in range(count) if self.text_encoder_lrs[i] > 0]

    @property
    def trains_text_encoder(self) -> bool:
        """Whether any text encoder is trained (SDXL's second counts: a model with one ignores it)."""
        return bool(self.trained_text_encoders(2))


def field_title(name: str) -> str:
    """The field's label for people ("Learning rate"); the key itself stays the name in files and on the CLI."""
    return TrainConfig.model_fields[name].title or name


def field_section(name: str) -> str:
    extra = TrainConfig.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    return str(extra["section"])


@dataclass(frozen=True)
class Bounds:
    """A numeric field's limits as pydantic enforces them: ``gt``/``lt`` exclude the bound, ``ge``/``le`` include it."""

    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True

    def text(self) -> str:
        """The range in one form for the options doc, the error message and the form's tooltip: ``1 <= x <= 1024``,
        ``> 0``, ``0 <= x < 1``."""
        low = f"{self.low:g} {'<=' if self.low_inclusive else '<'} " if self.low is not None else ""
        high = f" {'<=' if self.high_inclusive else '<'} {self.high:g}" if self.high is not None else ""
        if low and high:
            return f"{low}x{high}"
        if low:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        return high.strip()


def field_bounds(name: str) -> Bounds | None:
    """The numeric limits declared on a field (``opt(..., ge=1, le=1024)``), or None when it declares none."""
    limits: dict[str, Any] = {}
    for item in TrainConfig.model_fields[name].metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(item, attr, None) is not None:
                limits[attr] = getattr(item, attr)
    if not limits:
        return None
    low = limits.get("ge", limits.get("gt"))
    high = limits.get("le", limits.get("lt"))
    return Bounds(low, "gt" not in limits, high, "lt" not in limits)
