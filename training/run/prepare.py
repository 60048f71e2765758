"""Everything before the first step: accelerator, base model, dataset and buckets, LoRA, caches, optimizer.

``prepare()`` builds the run's parts (``training.run.parts``): the step's parts through ``build_step_parts``,
which ``training.bench`` uses too, the data, and the facts the run reports; it reports progress through the
event stream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.contract.events import EventWriter
from training.contract.layout import LATENT_CACHE_DIR, RunLayout
from training.data.buckets import bucket_table, buckets_for
from training.data.dataset import StepClock, TrainDataset, collate
from training.data.dataset_config import dataset_settings, scan_run_dataset
from training.data.folder import DatasetScan, ImageItem
from training.data.latents import LatentCache
from training.data.masks import mask_source
from training.data.sampler import BucketBatchSampler
from training.data.subset import SubsetOptions
from training.models.conditioning import TextEmbeds
from training.models.loading import BaseModel, load_base_model, load_vae, with_zero_terminal_snr
from training.models.low_precision import store_in_fp8
from training.models.text import encode_text
from training.networks.build import Ranks, add_network
from training.plan.preflight import advice
from training.plan.schedule import Schedule, split_validation
from training.run.checkpoints import register_lora_only_state
from training.run.compiled import compile_cache_folder, compile_unet, use_compile_cache
from training.run.loss import prediction_advice
from training.run.optim import check_optimizer_settings, make_optimizer, make_scheduler
from training.run.param_groups import network_param_groups
from training.run.parts import RunFacts, StepParts, StepSettings, TrainData, Trainer
from training.run.validation import build_validation_set

TEXT_ENCODER_GROUPS = ("text_encoder", "text_encoder_2")


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
    logging_dir = Path(cfg.logging_dir) if cfg.logging_dir else RunLayout(run_dir).logs
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(logging_dir)),
    )


def dtype_for(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def make_dataset(cfg: TrainConfig, scan: DatasetScan) -> TrainDataset:
    dataset = TrainDataset(scan, resolution=cfg.resolution_wh, enable_bucket=cfg.enable_bucket,
                           min_reso=cfg.min_bucket_reso, max_reso=cfg.max_bucket_reso, step=cfg.bucket_reso_steps,
                           options=SubsetOptions.from_config(cfg), seed=cfg.seed,
                           prior_loss_weight=cfg.prior_loss_weight)
    dataset.masks = mask_source(cfg, scan.items)
    return dataset


def add_networks(cfg: TrainConfig, base: BaseModel) -> list[dict[str, Any]]:
    """Inject the configured network (``cfg.network``: LoRA, LoCon, LoHa, LoKr, DoRA) and return optimizer groups,
    one per trained part with its own learning rate (SDXL's two text encoders each have theirs:
    ``text_encoder_lr = [TE1, TE2]``), split further by block and by LoRA+ when networks.lora's args ask
    (``network_param_groups``)."""
    spec = cfg.network
    sdxl = base.family.unet_sgm_names  # sd-scripts numbers SDXL's UNet blocks in its SGM layout
    ranks = Ranks.of(spec, cfg.network_dim, cfg.network_alpha, sdxl)
    trained = cfg.trained_text_encoders(len(base.text_encoders))
    from_file = ranks_from_weights(cfg, base, trained) if cfg.dim_from_weights else None
    if from_file is not None:
        spec = dataclasses.replace(spec, conv_dim=spec.conv_dim or 1)  # every kohya module: the file picks
    models = [("unet", base.unet, cfg.effective_unet_lr, "unet")]
    models += [(i, base.text_encoders[i], cfg.text_encoder_lrs[i], TEXT_ENCODER_GROUPS[i]) for i in trained]
    for encoder in base.text_encoders:
        encoder.requires_grad_(False)
    groups = []
    for component, model, lr, name in models:
        model_ranks = ranks if from_file is None else dataclasses.replace(ranks, modules=from_file[component])
        add_network(model, spec, model_ranks, "unet" if component == "unet" else "text_encoder", cfg.network_dropout)
        groups += network_param_groups(model, lr, name, spec, unet=component == "unet", sdxl=sdxl)
    if cfg.network_weights:
        continue_from(cfg, base, trained)
    return groups


def ranks_from_weights(cfg: TrainConfig, base: BaseModel, trained: list[int]) -> dict[int | str, dict]:
    """dim_from_weights: each module's rank and alpha from the network_weights file, per model; every trained model
    must have modules there (sd-scripts trains only the file's modules)."""
    from training.lora_files.importer import file_module_ranks

    path = Path(cfg.network_weights or "")
    per = file_module_ranks(path, base.unet, base.text_encoders, base.family)
    for component in ["unet", *trained]:
        if not per.get(component):
            which = "the UNet" if component == "unet" else f"text encoder {int(component) + 1}"
            hint = "" if component == "unet" else ": set network_train_unet_only = true, or pick a file that has it"
            raise UserError(f"dim_from_weights: network_weights {path.name} has no modules for {which}{hint}")
    return per


def continue_from(cfg: TrainConfig, base: BaseModel, trained: list[int]) -> None:
    """Start the new LoRA from an existing kohya file (same ranks, same parts; dim_from_weights builds the network
    at the file's ranks first)."""
    from safetensors import safe_open

    from training.lora_files.importer import load_kohya_into_peft

    path = Path(cfg.network_weights or "")
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception as err:  # safetensors raises its own error types for a damaged or foreign file
        raise UserError(f"network_weights {path}: not a readable LoRA .safetensors file ({err})") from None
    prefixes = base.family.te_prefixes
    for i, prefix in enumerate(prefixes):
        if i not in trained and any(k.startswith(prefix + "_") for k in keys):
            which = "the text encoder" if len(prefixes) == 1 else f"text encoder {i + 1}"
            raise UserError(f"network_weights {path.name} trains {which} too, but this run does not: set "
                            f"network_train_unet_only = false and a text_encoder_lr above 0 for it")
    try:
        load_kohya_into_peft(path, base.unet, base.text_encoders, base.family)
    except UserError as err:
        hint = "" if cfg.dim_from_weights else ("; set network_dim/network_alpha (and conv_dim) to the file's, or "
                                                "dim_from_weights = true to take each module's rank from the file")
        raise UserError(f"network_weights {path.name}: {err} (network_dim is {cfg.network_dim}){hint}") from None


def cache_text(cfg: TrainConfig, base: BaseModel, captions: set[str] | None,
               device) -> dict[str, TextEmbeds] | None:
    """Text embeddings computed once, when the text encoders are frozen and the captions never change: ``captions``
    is None when some do (shuffled, tag dropout, token warm-up, wildcards: ``TrainDataset.fixed_captions``)."""
    if not cfg.cache_text_encoder_outputs or cfg.trains_text_encoder or captions is None:
        return None
    for encoder in base.text_encoders:
        encoder.to(device)
    texts = sorted(captions | {""})  # "" for caption dropout
    cache: dict[str, TextEmbeds] = {}
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            chunk = texts[i : i + 32]
            embeds = encode_text(base.text_encoders, base.tokenizers, chunk, cfg.clip_skip)
            cache.update(zip(chunk, embeds.unbatched(), strict=True))
    for encoder in base.text_encoders:
        encoder.to("cpu")  # no longer needed every step; sampling brings them back
    return cache


@dataclass
class LoadedData:
    """The scanned dataset split into training and validation images, with the training dataset and its sampler."""

    scan: DatasetScan
    train_items: list[ImageItem]
    val_items: list[ImageItem]
    val_kind: str
    dataset: TrainDataset
    sampler: BucketBatchSampler
    bucket_counts: dict[tuple[int, int], int]


def load_data(cfg: TrainConfig, events: EventWriter, scan: DatasetScan | None) -> LoadedData:
    events.emit("status", phase="loading", msg="scanning the dataset")
    scan = scan or scan_run_dataset(cfg)
    for path, reason in scan.skipped:
        events.emit("warning", code="image_skipped", msg=f"skipped {path}: {reason}")
    for msg in scan.warnings:
        events.emit("warning", code="dataset", msg=msg)
    train_items, val_items, val_kind = split_validation(cfg, scan.items)
    dataset = make_dataset(cfg, dataclasses.replace(scan, items=train_items))
    sampler = BucketBatchSampler(dataset.buckets, cfg.train_batch_size, cfg.seed, datasets=dataset.datasets)
    counts = dataset.bucket_counts()
    if scan.reg_items:
        events.emit("status", phase="loading", msg=reg_summary(dataset))
    events.emit("status", phase="loading", msg="buckets:\n" + bucket_table(counts))
    return LoadedData(scan, train_items, val_items, val_kind, dataset, sampler, counts)


def reg_summary(dataset: TrainDataset) -> str:
    train = sum(it.repeats for it in dataset.items if not it.is_reg)
    return (f"regularisation: {dataset.num_reg_samples} regularisation samples per epoch beside {train} training "
            f"samples, loss weight {dataset.prior_loss_weight:g}")


def load_model(cfg: TrainConfig, events: EventWriter, weight_dtype) -> tuple[BaseModel, list[dict]]:
    """Base model in the compute dtype, still on the CPU (the caches run first, so the UNet and the VAE's encode
    never share the GPU), LoRA injected, trainable LoRA weights in float32 for stable optimizer updates."""
    events.emit("status", phase="loading", msg=f"loading base model {cfg.pretrained_model_name_or_path}")
    base = load_base_model(cfg.pretrained_model_name_or_path, cfg.v2, cfg.v_parameterization)
    if cfg.vae:
        events.emit("status", phase="loading", msg=f"loading VAE {cfg.vae}")
        base.vae = load_vae(cfg.vae, base.family)
    for code, msg in family_advice(cfg, base):
        events.emit("warning", code=code, msg=msg)
    if cfg.zero_terminal_snr:
        base.noise_scheduler = with_zero_terminal_snr(base.noise_scheduler)
    base.vae.requires_grad_(False)
    base.vae.to(dtype=vae_dtype(base, weight_dtype))
    base.unet.to(dtype=weight_dtype)  # cast before moving: an fp32 copy on the GPU would double peak memory
    for encoder in base.text_encoders:
        encoder.to(dtype=weight_dtype)
    groups = add_networks(cfg, base)
    lora_dtype = torch.bfloat16 if cfg.full_bf16 else torch.float32  # full_bf16: see training.models.low_precision
    for group in groups:
        for p in group["params"]:
            p.data = p.data.to(lora_dtype)
    if cfg.fp8_base:  # after the last cast to weight_dtype, which would undo it
        for model in (base.unet, *base.text_encoders):
            store_in_fp8(model, weight_dtype)
    if cfg.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        for i in cfg.trained_text_encoders(len(base.text_encoders)):
            base.text_encoders[i].gradient_checkpointing_enable()
    return base, groups


def vae_dtype(base: BaseModel, weight_dtype: torch.dtype) -> torch.dtype:
    """float32 unless the VAE's config declares it fp16-safe (``force_upcast: false``, e.g. madebyollin's
    sdxl-vae-fp16-fix): the SD and SDXL VAEs overflow in fp16 and the latents turn NaN."""
    return weight_dtype if getattr(base.vae.config, "force_upcast", True) is False else torch.float32


def family_advice(cfg: TrainConfig, base: BaseModel) -> list[tuple[str, str]]:
    """Settings that are valid but wrong for the family just loaded (only known once the model is read)."""
    notes = []
    if len(base.text_encoders) == 2 and cfg.clip_skip > 2:
        notes.append(("clip_skip_sdxl", f"clip_skip = {cfg.clip_skip} on an SDXL model: SDXL was trained on the "
                                        "penultimate layer, which clip_skip 1 and 2 both give; use 1 unless you "
                                        "know why"))
    if base.family.v2 and cfg.clip_skip > 1:
        notes.append(("clip_skip_sd2", f"clip_skip = {cfg.clip_skip} on an SD2 model: SD2 was trained on the last "
                                       "layer; use 1 unless the model says so"))
    notes += prediction_advice(cfg, base.family.v_parameterization)
    width, height = cfg.resolution_wh
    native = base.family.default_resolution
    if len(base.text_encoders) == 2 and width * height < (native * 3 // 4) ** 2:  # 512 is the config's default
        notes.append(("resolution_low", f"resolution {cfg.resolution} on an SDXL model made for {native} px: the "
                                        f"LoRA learns blurry, small-scale detail; use resolution = \"{native}\" "
                                        "(the SDXL presets set it)"))
    return notes


def build_caches(cfg: TrainConfig, base: BaseModel, data: LoadedData, run_dir: Path, device, events: EventWriter):
    """Latents and text embeddings computed once; frozen parts no longer needed every step then leave the GPU
    (sampling brings them back)."""
    latent_cache = None
    base.vae.to(device)
    if cfg.cache_latents:
        events.emit("status", phase="caching_latents", msg=f"encoding {len(data.dataset.items)} images with the VAE")
        cache_dir = run_dir.parent / LATENT_CACHE_DIR if cfg.cache_latents_to_disk else None
        latent_cache = LatentCache(base.vae, cache_dir, device, base.vae.dtype)
        val_buckets = buckets_for(cfg, data.val_items)
        val_jobs = [(it.path, b, False) for it, b in zip(data.val_items, val_buckets, strict=True)]
        latent_cache.encode_all(data.dataset.latent_jobs() + val_jobs, batch_size=4)
        data.dataset.attach_latents(latent_cache, device)
    val_items = data.dataset.with_fixed_captions(data.val_items)  # prefix, suffix, separators as in training
    fixed = data.dataset.fixed_captions()
    captions = None if fixed is None else fixed | {it.caption for it in val_items}
    text_cache = cache_text(cfg, base, captions, device)
    validation = None
    if val_items:
        validation = build_validation_set(cfg, base, val_items, data.val_kind, latent_cache, device)
    if latent_cache is not None:
        base.vae.to("cpu")
    return latent_cache, text_cache, validation


def place_models(base: BaseModel, device, text_cached: bool) -> None:
    """The UNet on the device; the text encoders too unless their outputs are cached."""
    base.unet.to(device)
    if not text_cached:
        for encoder in base.text_encoders:
            encoder.to(device)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the VAE's encode buffers: give them back before the first step


def build_step_parts(cfg: TrainConfig, accelerator: Accelerator, unet: torch.nn.Module,
                     text_encoders: list[torch.nn.Module], groups: list[dict[str, Any]], total_steps: int, *,
                     noise_scheduler, tokenizers: list[Any], vae, text_cache: dict[str, TextEmbeds] | None,
                     weight_dtype: torch.dtype) -> StepParts:
    """Optimizer, LR schedule and accelerate's wrapping around a model whose LoRA ``groups`` (see add_networks)
    are injected; the trained models become accelerate's, the frozen parts are passed through."""
    optimizer = make_optimizer(cfg, [{"params": g["params"], "lr": g["lr"]} for g in groups])
    lr_scheduler = make_scheduler(cfg, optimizer, total_steps)
    register_lora_only_state(accelerator)
    trained = cfg.trained_text_encoders(len(text_encoders))
    compiled = compile_unet(unet, cfg.dynamo_backend) if cfg.torch_compile else unet
    prepared = accelerator.prepare(compiled, *[text_encoders[i] for i in trained], optimizer, lr_scheduler)
    unet, optimizer, lr_scheduler = prepared[0], prepared[-2], prepared[-1]
    encoders = list(text_encoders)
    for i, wrapped in zip(trained, prepared[1:-2], strict=True):
        encoders[i] = wrapped
    return StepParts(accelerator, unet, encoders, [unet] + [encoders[i] for i in trained],
                     [p for g in groups for p in g["params"]], optimizer, lr_scheduler, noise_scheduler, tokenizers,
                     vae, text_cache, weight_dtype, torch.Generator(device=accelerator.device).manual_seed(cfg.seed),
                     StepSettings.from_config(cfg))


def prepare(cfg: TrainConfig, run_dir: Path, events: EventWriter, scan: DatasetScan | None = None) -> Trainer:
    check_optimizer_settings(cfg)  # optimizer_args and lr_scheduler_type refused before any model loads
    cfg = dataset_settings(cfg)  # a dataset config's resolution, batch size and buckets are the run's
    accelerator = make_accelerator(cfg, run_dir, events)
    set_seed(cfg.seed)  # LoRA initialisation, dropout: the same seed gives the same run
    device, weight_dtype = accelerator.device, dtype_for(accelerator.mixed_precision)
    for code, msg in advice(cfg):
        events.emit("warning", code=code, msg=msg)
    loaded = load_data(cfg, events, scan)
    base, groups = load_model(cfg, events, weight_dtype)
    latent_cache, text_cache, validation = build_caches(cfg, base, loaded, run_dir, device, events)
    place_models(base, device, text_cache is not None)

    schedule = Schedule.build(cfg, len(loaded.sampler), accelerator.num_processes)
    loaded.dataset.set_clock(StepClock(loaded.sampler.batches, schedule.steps_per_epoch,
                                       cfg.gradient_accumulation_steps * accelerator.num_processes,
                                       schedule.total_steps))  # token warm-up counts steps
    if cfg.torch_compile:
        use_compile_cache(compile_cache_folder(run_dir))
    parts = build_step_parts(cfg, accelerator, base.unet, base.text_encoders, groups, schedule.total_steps,
                             noise_scheduler=base.noise_scheduler, tokenizers=base.tokenizers, vae=base.vae,
                             text_cache=text_cache, weight_dtype=weight_dtype)
    loader = accelerator.prepare(torch.utils.data.DataLoader(
        loaded.dataset, batch_sampler=loaded.sampler, collate_fn=collate,
        num_workers=0 if latent_cache is not None else cfg.max_data_loader_n_workers,
        pin_memory=device.type == "cuda" and latent_cache is None))
    data = TrainData(loaded.dataset, loaded.sampler, loader, latent_cache, validation)
    facts = RunFacts(loaded.scan, loaded.bucket_counts, schedule, base.family, [g["name"] for g in groups])
    return Trainer(cfg, run_dir, base, parts, data, facts)
