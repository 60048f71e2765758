"""Everything before the first step: accelerator, base model, dataset and buckets, LoRA, caches, optimizer.

``prepare()`` returns a Trainer holding what the loop needs; it reports progress through the event stream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from training.checkpoints import register_lora_only_state
from training.config import TrainConfig
from training.data.buckets import assign_buckets, bucket_table
from training.data.dataset import TrainDataset, collate
from training.data.folder import DatasetScan, ImageItem, scan_dataset
from training.data.latents import LatentCache
from training.data.sampler import BucketBatchSampler
from training.errors import UserError
from training.events import EventWriter
from training.models.loading import BaseModel, load_base_model
from training.models.text import encode_prompts
from training.network import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora
from training.optim import make_optimizer, make_scheduler
from training.plan import Plan, plan_run, split_validation
from training.preflight import advice
from training.validation import ValidationSet, build_validation_set


@dataclass
class Trainer:
    cfg: TrainConfig
    run_dir: Path
    accelerator: Accelerator
    base: BaseModel
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    dataloader: Any
    sampler: BucketBatchSampler
    dataset: TrainDataset
    scan: DatasetScan
    latent_cache: LatentCache | None
    text_cache: dict[str, torch.Tensor] | None
    validation: ValidationSet | None
    plan: Plan
    weight_dtype: torch.dtype
    generator: torch.Generator
    bucket_counts: dict[tuple[int, int], int]


def make_accelerator(cfg: TrainConfig, run_dir: Path, events: EventWriter) -> Accelerator:
    precision = cfg.mixed_precision
    if precision != "no" and not torch.cuda.is_available():
        events.emit("warning", code="no_gpu", msg=f"no CUDA GPU: training in float32 on the CPU instead of "
                                                  f"{precision} (very slow; fine for a pipeline check)")
        precision = "no"
    elif precision == "bf16" and not torch.cuda.is_bf16_supported():
        events.emit("warning", code="no_bf16", msg="this GPU has no bf16: using fp16 mixed precision")
        precision = "fp16"
    log_with = []
    try:
        import tensorboard  # noqa: F401

        log_with.append("tensorboard")
    except ImportError:
        pass
    logging_dir = Path(cfg.logging_dir) if cfg.logging_dir else run_dir / "logs"
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(logging_dir)),
    )


def dtype_for(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def buckets_for(cfg: TrainConfig, items: list[ImageItem]) -> list[tuple[int, int]]:
    return assign_buckets([it.size for it in items], resolution=cfg.resolution_wh, enable_bucket=cfg.enable_bucket,
                          min_reso=cfg.min_bucket_reso, max_reso=cfg.max_bucket_reso, step=cfg.bucket_reso_steps)


def make_dataset(cfg: TrainConfig, scan: DatasetScan) -> TrainDataset:
    return TrainDataset(scan, resolution=cfg.resolution_wh, enable_bucket=cfg.enable_bucket,
                        min_reso=cfg.min_bucket_reso, max_reso=cfg.max_bucket_reso, step=cfg.bucket_reso_steps,
                        shuffle_caption=cfg.shuffle_caption, keep_tokens=cfg.keep_tokens,
                        caption_dropout_rate=cfg.caption_dropout_rate, flip_aug=cfg.flip_aug, seed=cfg.seed)


def add_networks(cfg: TrainConfig, base: BaseModel) -> list[dict[str, Any]]:
    """Inject LoRA and return optimizer groups, one per trained part with its own learning rate."""
    groups = [{"params": add_lora(base.unet, UNET_TARGETS, cfg.network_dim, cfg.network_alpha,
                                  cfg.network_dropout), "lr": cfg.effective_unet_lr, "name": "unet"}]
    base.text_encoder.requires_grad_(False)
    if cfg.trains_text_encoder:
        groups.append({"params": add_lora(base.text_encoder, TEXT_ENCODER_TARGETS, cfg.network_dim,
                                          cfg.network_alpha, cfg.network_dropout),
                       "lr": cfg.effective_text_encoder_lr, "name": "text_encoder"})
    if cfg.network_weights:
        continue_from(cfg, base)
    return groups


def continue_from(cfg: TrainConfig, base: BaseModel) -> None:
    """Start the new LoRA from an existing kohya file (same rank, same parts)."""
    from safetensors import safe_open

    from training.lora_import import load_kohya_into_peft

    path = Path(cfg.network_weights or "")
    try:
        with safe_open(str(path), "pt") as f:
            has_te = any(k.startswith(base.family.te_prefixes) for k in f.keys())  # noqa: SIM118 - safe_open API
    except Exception as err:  # safetensors raises its own error types for a damaged or foreign file
        raise UserError(f"network_weights {path}: not a readable LoRA .safetensors file ({err})") from None
    if has_te and not cfg.trains_text_encoder:
        raise UserError(f"network_weights {path.name} trains the text encoder too, but this run does not: "
                        f"set network_train_unet_only = false (and a text_encoder_lr above 0)")
    encoders = [base.text_encoder] if cfg.trains_text_encoder else []
    try:
        load_kohya_into_peft(path, base.unet, encoders, base.family)
    except UserError as err:
        raise UserError(f"network_weights {path.name}: {err} (network_dim is {cfg.network_dim})") from None


def cache_text(cfg: TrainConfig, base: BaseModel, captions: set[str], device) -> dict[str, torch.Tensor] | None:
    """Text embeddings computed once, when the text encoder is frozen and the captions never change."""
    if cfg.trains_text_encoder or cfg.shuffle_caption:
        return None
    texts = sorted(captions | {""})  # "" for caption dropout
    cache = {}
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            chunk = texts[i : i + 32]
            emb = encode_prompts(base.text_encoder, base.tokenizer, chunk, cfg.clip_skip)
            cache.update(zip(chunk, emb, strict=True))
    return cache


@dataclass
class Data:
    scan: DatasetScan
    train_items: list[ImageItem]
    val_items: list[ImageItem]
    val_kind: str
    dataset: TrainDataset
    sampler: BucketBatchSampler
    bucket_counts: dict[tuple[int, int], int]


def load_data(cfg: TrainConfig, events: EventWriter, scan: DatasetScan | None) -> Data:
    events.emit("status", phase="loading", msg="scanning the dataset")
    scan = scan or scan_dataset(Path(cfg.train_data_dir), cfg.caption_extension)
    for path, reason in scan.skipped:
        events.emit("warning", code="image_skipped", msg=f"skipped {path}: {reason}")
    for msg in scan.warnings:
        events.emit("warning", code="dataset", msg=msg)
    train_items, val_items, val_kind = split_validation(cfg, scan.items)
    dataset = make_dataset(cfg, dataclasses.replace(scan, items=train_items))
    sampler = BucketBatchSampler(dataset.buckets, cfg.train_batch_size, cfg.seed)
    counts = dataset.bucket_counts()
    events.emit("status", phase="loading", msg="buckets:\n" + bucket_table(counts))
    return Data(scan, train_items, val_items, val_kind, dataset, sampler, counts)


def load_model(cfg: TrainConfig, events: EventWriter, device, weight_dtype) -> tuple[BaseModel, list[dict]]:
    """Base model on the device in the compute dtype (cast before moving: an fp32 copy would double peak memory),
    LoRA injected, trainable LoRA weights in float32 for stable optimizer updates."""
    events.emit("status", phase="loading", msg=f"loading base model {cfg.pretrained_model_name_or_path}")
    base = load_base_model(cfg.pretrained_model_name_or_path, cfg.v2, cfg.v_parameterization)
    if base.family.v2 and cfg.clip_skip > 1:
        events.emit("warning", code="clip_skip_sd2", msg=f"clip_skip = {cfg.clip_skip} on an SD2 model: SD2 was "
                                                          "trained on the last layer; use 1 unless the model says so")
    base.vae.requires_grad_(False)
    base.vae.to(device, dtype=torch.float32)  # fp32 VAE: fp16 VAEs overflow into NaN latents
    base.unet.to(device, dtype=weight_dtype)
    base.text_encoder.to(device, dtype=weight_dtype)
    groups = add_networks(cfg, base)
    for group in groups:
        for p in group["params"]:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if cfg.trains_text_encoder:
            base.text_encoder.gradient_checkpointing_enable()
    return base, groups


def build_caches(cfg: TrainConfig, base: BaseModel, data: Data, run_dir: Path, device, events: EventWriter):
    """Latents and text embeddings computed once; frozen parts no longer needed every step then leave the GPU
    (sampling brings them back)."""
    latent_cache = None
    if cfg.cache_latents:
        events.emit("status", phase="caching_latents", msg=f"encoding {len(data.train_items)} images with the VAE")
        cache_dir = run_dir.parent / ".latent_cache" if cfg.cache_latents_to_disk else None
        latent_cache = LatentCache(base.vae, cache_dir, device, torch.float32)
        val_buckets = buckets_for(cfg, data.val_items)
        val_jobs = [(it.path, b, False) for it, b in zip(data.val_items, val_buckets, strict=True)]
        latent_cache.encode_all(data.dataset.latent_jobs() + val_jobs, batch_size=4)
        data.dataset.attach_latents(latent_cache, device)
    text_cache = cache_text(cfg, base, {it.caption for it in data.train_items + data.val_items}, device)
    validation = None
    if data.val_items:
        validation = build_validation_set(cfg, base, data.val_items, data.val_kind, latent_cache, device)
    if latent_cache is not None:
        base.vae.to("cpu")
    if text_cache is not None:
        base.text_encoder.to("cpu")
    return latent_cache, text_cache, validation


def prepare(cfg: TrainConfig, run_dir: Path, events: EventWriter, scan: DatasetScan | None = None) -> Trainer:
    accelerator = make_accelerator(cfg, run_dir, events)
    set_seed(cfg.seed)  # LoRA initialisation, dropout: the same seed gives the same run
    device, weight_dtype = accelerator.device, dtype_for(accelerator.mixed_precision)
    for code, msg in advice(cfg):
        events.emit("warning", code=code, msg=msg)
    data = load_data(cfg, events, scan)
    base, groups = load_model(cfg, events, device, weight_dtype)
    latent_cache, text_cache, validation = build_caches(cfg, base, data, run_dir, device, events)

    params = [p for g in groups for p in g["params"]]
    optimizer = make_optimizer(cfg, [{"params": g["params"], "lr": g["lr"]} for g in groups])
    loader = torch.utils.data.DataLoader(
        data.dataset, batch_sampler=data.sampler, collate_fn=collate,
        num_workers=0 if latent_cache is not None else cfg.max_data_loader_n_workers,
        pin_memory=device.type == "cuda" and latent_cache is None)
    plan = plan_run(cfg, len(data.sampler), accelerator.num_processes)
    lr_scheduler = make_scheduler(cfg, optimizer, plan.total_steps)
    register_lora_only_state(accelerator)
    unet = torch.compile(base.unet) if cfg.torch_compile else base.unet
    if cfg.trains_text_encoder:
        unet, text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(
            unet, base.text_encoder, optimizer, loader, lr_scheduler)
    else:
        unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
        text_encoder = base.text_encoder
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    return Trainer(cfg, run_dir, accelerator, base, unet, text_encoder, params, optimizer, lr_scheduler, loader,
                   data.sampler, data.dataset, data.scan, latent_cache, text_cache, validation, plan, weight_dtype,
                   generator, data.bucket_counts)
