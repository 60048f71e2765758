"""TrainConfig: every training option, flat, under kohya-ss/sd-scripts names where kohya has one.

One model feeds the CLI, the TOML files, the LoRA metadata and the options table in docs/options.md. Each field
carries its default, its limits, the TOML section it is saved under and a one-line reason (the UI's tooltip).
Torch-free on purpose: the UI imports this module.
"""

from __future__ import annotations

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
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
]


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
    cache_latents: bool = opt(
        True, "dataset", "Cache latents", "Encode images with the VAE once instead of every step: faster, less memory.")
    cache_latents_to_disk: bool = opt(
        False, "dataset", "Cache latents on disk",
        "Also keep cached latents on disk (.latent_cache beside the run folder) for later runs.")
    cache_text_encoder_outputs: bool = opt(
        True, "dataset", "Cache text-encoder outputs",
        "Encode each caption once when the text encoders are frozen and captions are not shuffled; "
        "the encoders then leave the GPU (saves ~1.6 GB on SDXL).")
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
        None, "network", "Start from LoRA file", "Start from an existing kohya-format LoRA file of the same rank.")

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
    save_state: bool = opt(
        False, "save", "Save training state",
        "Save the full training state with each save so the run can be resumed exactly.")
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

    @field_validator("caption_extension")
    @classmethod
    def _caption_extension(cls, value: str) -> str:
        if not value.startswith(".") or len(value) < 2 or "/" in value or "\\" in value:
            raise ValueError("must be an extension starting with '.', such as .txt or .caption")
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
    def _network_valid(self) -> TrainConfig:
        self.network  # noqa: B018 - parsing is the check; it raises on a bad module or arg
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
