"""Every option of sd-scripts' ``train_network.py`` and ``sdxl_train_network.py``, with what this trainer does with it.

A kohya config file is the argparse namespace of those scripts written as TOML, so each of its keys is one of the
options below. Each has sd-scripts' own default (as its parser declares it) and one of four classes:

- ``SUPPORTED``: a TrainConfig field of the same name, meaning the same thing.
- ``MAPPED``: read as another setting (a deprecated spelling, a switch that picks an optimizer, a command).
- ``IGNORED``: a hardware or implementation switch that does not change what is trained; dropped with a note that
  says what this trainer does instead.
- ``REFUSED``: a feature this trainer does not have; a file that turns it on is refused with the reason. A refused
  key set to sd-scripts' default (the feature off) asks for nothing and is accepted.

The table also says what sd-scripts' default means as one of our values (``means``), for the kohya-file mode that
fills the keys a kohya file leaves out with sd-scripts' defaults; ``keep`` names the few where our default stays and
why. Torch-free: the UI and the options doc read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["supported", "mapped", "ignored", "refused"]
SUPPORTED: Status = "supported"
MAPPED: Status = "mapped"
IGNORED: Status = "ignored"
REFUSED: Status = "refused"

SAME = object()  # marker: sd-scripts' default means the same value in our field
RANDOM_SEED = "random"  # marker: sd-scripts draws a seed when none is given

NOT_YET = "not supported yet"
PERFORMANCE = "not yet: the performance issue (lower-precision weights and fused passes)"
DEEPSPEED = "DeepSpeed is not offered; multi-GPU runs use accelerate's data parallelism"
HUB = "uploading to or resuming from the Hugging Face Hub is not offered; copy the files yourself"
LOGGING = "events.jsonl is always written; TensorBoard logs when tensorboard is installed (no W&B)"
ATTENTION = "attention always uses PyTorch SDPA"
CONSOLE = "the console shows the trainer's own lines; events.jsonl holds the full log"
METADATA = f"{NOT_YET} (LoRA metadata fields)"


@dataclass(frozen=True)
class KohyaKey:
    """One sd-scripts option: its default there, what it is here, and why."""

    name: str
    default: Any  # sd-scripts' parser default
    status: Status
    reason: str = ""  # mapped: what it becomes; ignored: what happens instead; refused: why
    means: Any = SAME  # supported: our field's value that sd-scripts' default stands for
    keep: str = ""  # supported: why our own default stays even in a kohya file
    sd_scripts: bool = True  # False: written by the kohya_ss GUI, not an sd-scripts option

    @property
    def fill(self) -> Any:
        """The value a kohya file that leaves this key out means."""
        return self.default if self.means is SAME else self.means


def _k(name: str, default: Any, status: Status, reason: str = "", **kw: Any) -> KohyaKey:
    return KohyaKey(name, default, status, reason, **kw)


SUP, MAP, IGN, REF = SUPPORTED, MAPPED, IGNORED, REFUSED

KEYS: tuple[KohyaKey, ...] = (
    # --- logging (sd-scripts' console)
    _k("console_log_level", None, IGN, CONSOLE),
    _k("console_log_file", None, IGN, CONSOLE),
    _k("console_log_simple", False, IGN, CONSOLE),
    # --- model
    _k("v2", False, SUP, keep="unset reads the model family from the checkpoint; a file that names it still wins"),
    _k("v_parameterization", False, SUP,
       keep="unset reads the prediction type from the model's scheduler; a file that names it still wins"),
    _k("pretrained_model_name_or_path", None, SUP, means=""),
    _k("tokenizer_cache_dir", None, IGN, "the tokenizers are read from the base model"),
    _k("vae", None, SUP),
    _k("clip_skip", None, SUP, means=1),
    _k("disable_mmap_load_safetensors", False, IGN, "checkpoints are read with safetensors' own loader"),
    _k("no_half_vae", False, IGN, "the VAE always runs in float32 unless it declares itself fp16-safe"),
    # --- model spec metadata (sai_model_spec)
    _k("metadata_title", None, SUP),
    _k("metadata_author", None, SUP),
    _k("metadata_description", None, SUP),
    _k("metadata_license", None, SUP),
    _k("metadata_tags", None, SUP),
    _k("metadata_usage_hint", None, REF, METADATA),
    _k("metadata_thumbnail", None, REF, METADATA),
    _k("metadata_merged_from", None, REF, METADATA),
    _k("metadata_trigger_phrase", None, REF, METADATA),
    _k("metadata_preprocessor", None, REF, METADATA),
    _k("metadata_is_negative_embedding", None, REF, METADATA),
    # --- dataset
    _k("train_data_dir", None, SUP, means=""),
    _k("cache_info", False, IGN, "the latent cache is checked against each image on every run"),
    _k("shuffle_caption", False, SUP),
    _k("caption_separator", ",", SUP),
    _k("caption_extension", ".caption", SUP),
    _k("caption_extention", None, MAP, "sd-scripts' old spelling: read as caption_extension"),
    _k("keep_tokens", 0, SUP),
    _k("keep_tokens_separator", "", SUP),
    _k("secondary_separator", None, SUP),
    _k("enable_wildcard", False, SUP),
    _k("caption_prefix", None, SUP),
    _k("caption_suffix", None, SUP),
    _k("color_aug", False, SUP),
    _k("flip_aug", False, SUP),
    _k("face_crop_aug_range", None, SUP),
    _k("random_crop", False, SUP),
    _k("debug_dataset", False, REF,
       "sd-scripts' dataset viewer trains nothing; the Dataset tab shows the images and captions"),
    _k("resolution", None, SUP, keep="sd-scripts stops without one; 512 is the SD1.5 size"),
    _k("cache_latents", False, SUP),
    _k("vae_batch_size", 1, IGN, "latents are cached a batch of the training batch size at a time"),
    _k("cache_latents_to_disk", False, SUP),
    _k("skip_cache_check", False, IGN, "the latent cache is checked against each image on every run"),
    _k("enable_bucket", False, SUP),
    _k("min_bucket_reso", 256, SUP),
    _k("max_bucket_reso", 1024, SUP),
    _k("bucket_reso_steps", 64, SUP),
    _k("bucket_no_upscale", False, IGN, "buckets never upscale images"),
    _k("resize_interpolation", None, IGN, "images are resized with Lanczos"),
    _k("token_warmup_min", 1, SUP),
    _k("token_warmup_step", 0, SUP),
    _k("alpha_mask", False, SUP),
    _k("dataset_class", None, REF, "custom dataset classes are not offered; use a folder of images and captions"),
    _k("caption_dropout_rate", 0.0, SUP),
    _k("caption_dropout_every_n_epochs", 0, SUP),
    _k("caption_tag_dropout_rate", 0.0, SUP),
    _k("reg_data_dir", None, SUP, means=""),
    _k("in_json", None, REF, "fine-tuning metadata files are not offered; put captions in files beside the images"),
    _k("dataset_repeats", 1, REF, "repeats of in_json datasets, which are not offered; name folders N_name instead"),
    _k("dataset_config", None, SUP),
    _k("cache_text_encoder_outputs", False, SUP,
       keep="applies only when the encoders are frozen and captions fixed, where it trains the same, faster"),
    _k("cache_text_encoder_outputs_to_disk", False, IGN, "caption embeddings are cached in memory (they are small)"),
    _k("validation_split", 0.0, SUP),
    _k("validate_every_n_steps", None, MAP, "read as validation_every_n_steps"),
    _k("validate_every_n_epochs", None, REF, "validation is scheduled in steps: set validation_every_n_steps"),
    _k("max_validation_steps", None, IGN, "validation covers the whole held-out set"),
    _k("validation_seed", None, IGN, "validation noise is drawn from the run's seed"),
    # --- output and saving
    _k("output_dir", None, SUP, means=""),
    _k("output_name", None, SUP,
       keep="sd-scripts names an unnamed run's files 'last' and 'epoch-…'; here every file of it is 'lora…'"),
    _k("huggingface_repo_id", None, REF, HUB),
    _k("huggingface_repo_type", None, REF, HUB),
    _k("huggingface_path_in_repo", None, REF, HUB),
    _k("huggingface_token", None, REF, HUB),
    _k("huggingface_repo_visibility", None, REF, HUB),
    _k("save_state_to_huggingface", False, REF, HUB),
    _k("resume_from_huggingface", False, REF, HUB),
    _k("async_upload", False, REF, HUB),
    _k("save_precision", None, SUP, means="float"),
    _k("save_every_n_epochs", None, SUP),
    _k("save_every_n_steps", None, SUP),
    _k("save_n_epoch_ratio", None, REF, "not offered: set save_every_n_epochs"),
    _k("save_last_n_epochs", None, SUP),
    _k("save_last_n_epochs_state", None, SUP),
    _k("save_last_n_steps", None, SUP),
    _k("save_last_n_steps_state", None, SUP),
    _k("save_state", False, SUP),
    _k("save_state_on_train_end", False, SUP),
    _k("resume", None, SUP),
    _k("save_model_as", "safetensors", SUP),
    _k("no_metadata", False, SUP),
    _k("training_comment", None, SUP),
    # --- training
    _k("train_batch_size", 1, SUP),
    _k("max_token_length", None, IGN, "captions use the standard 75-token window"),
    _k("mem_eff_attn", False, IGN, ATTENTION),
    _k("xformers", False, IGN, ATTENTION),
    _k("sdpa", False, IGN, ATTENTION),
    _k("torch_compile", False, SUP),
    _k("dynamo_backend", "inductor", SUP),
    _k("max_train_steps", 1600, SUP),
    _k("max_train_epochs", None, SUP),
    _k("max_data_loader_n_workers", 8, SUP,
       keep="how many processes load images changes the speed, not what is trained"),
    _k("persistent_data_loader_workers", False, IGN, "loader workers are managed automatically"),
    _k("seed", None, SUP, means=RANDOM_SEED),
    _k("gradient_checkpointing", False, SUP),
    _k("gradient_accumulation_steps", 1, SUP),
    _k("mixed_precision", "no", SUP),
    _k("full_fp16", False, REF, PERFORMANCE),
    _k("full_bf16", False, SUP),
    _k("fp8_base", False, SUP),
    _k("fp8_base_unet", False, REF, PERFORMANCE),
    _k("fused_backward_pass", False, REF, PERFORMANCE),
    _k("cpu_offload_checkpointing", False, REF, PERFORMANCE),
    _k("ddp_timeout", None, IGN, "multi-GPU runs use accelerate's defaults"),
    _k("ddp_gradient_as_bucket_view", False, IGN, "multi-GPU runs use accelerate's defaults"),
    _k("ddp_static_graph", False, IGN, "multi-GPU runs use accelerate's defaults"),
    _k("lowram", False, IGN, "memory is managed automatically"),
    _k("highvram", False, IGN, "memory is managed automatically"),
    _k("skip_until_initial_step", False, REF, "starting part-way through the schedule is not offered; resume a state"),
    _k("initial_epoch", None, REF, "starting part-way through the schedule is not offered; resume a state"),
    _k("initial_step", None, REF, "starting part-way through the schedule is not offered; resume a state"),
    # --- logging
    _k("logging_dir", None, SUP),
    _k("log_with", None, IGN, LOGGING),
    _k("log_prefix", None, IGN, LOGGING),
    _k("log_tracker_name", None, IGN, LOGGING),
    _k("wandb_run_name", None, IGN, LOGGING),
    _k("log_tracker_config", None, IGN, LOGGING),
    _k("wandb_api_key", None, IGN, LOGGING),
    _k("log_config", False, IGN, "the resolved config is always written to the run folder as job.toml"),
    # --- noise and loss
    _k("noise_offset", None, SUP, means=0.0),
    _k("noise_offset_random_strength", False, SUP),
    _k("multires_noise_iterations", None, SUP),
    _k("multires_noise_discount", 0.3, SUP),
    _k("ip_noise_gamma", None, SUP),
    _k("ip_noise_gamma_random_strength", False, SUP),
    _k("adaptive_noise_scale", None, SUP),
    _k("zero_terminal_snr", False, SUP),
    _k("min_timestep", None, SUP),
    _k("max_timestep", None, SUP),
    _k("loss_type", "l2", SUP),
    _k("huber_schedule", "snr", SUP),
    _k("huber_c", 0.1, SUP),
    _k("huber_scale", 1.0, SUP),
    _k("min_snr_gamma", None, SUP),
    _k("scale_v_pred_loss_like_noise_pred", False, SUP),
    _k("v_pred_like_loss", None, SUP),
    _k("debiased_estimation_loss", False, SUP),
    _k("masked_loss", False, SUP),
    _k("conditioning_data_dir", None, SUP),
    _k("prior_loss_weight", 1.0, SUP),
    _k("weighted_captions", False, REF, "caption weights like (word:1.2) are not offered; captions are plain text"),
    # --- samples
    _k("sample_every_n_steps", None, SUP),
    _k("sample_at_first", False, IGN, "no samples before the first step; the Train tab's Sample now makes them"),
    _k("sample_every_n_epochs", None, SUP),
    _k("sample_prompts", None, SUP),
    _k("sample_sampler", "ddim", SUP),
    # --- the config file itself
    _k("config_file", None, IGN, "config files are named with --config"),
    _k("output_config", False, MAP, "write the resolved config and exit (python -m training --output_config)"),
    # --- DeepSpeed
    _k("deepspeed", False, REF, DEEPSPEED),
    _k("zero_stage", 2, REF, DEEPSPEED),
    _k("offload_optimizer_device", None, REF, DEEPSPEED),
    _k("offload_optimizer_nvme_path", None, REF, DEEPSPEED),
    _k("offload_param_device", None, REF, DEEPSPEED),
    _k("offload_param_nvme_path", None, REF, DEEPSPEED),
    _k("zero3_init_flag", False, REF, DEEPSPEED),
    _k("zero3_save_16bit_model", False, REF, DEEPSPEED),
    _k("fp16_master_weights_and_gradients", False, REF, DEEPSPEED),
    # --- optimizer and schedule
    _k("optimizer_type", "", SUP, means="AdamW"),
    _k("use_8bit_adam", False, MAP, "read as optimizer_type = AdamW8bit"),
    _k("use_lion_optimizer", False, MAP, "read as optimizer_type = Lion"),
    _k("learning_rate", 2e-6, SUP),
    _k("max_grad_norm", 1.0, SUP),
    _k("optimizer_args", None, SUP, means=[]),
    _k("lr_scheduler_type", "", SUP),
    _k("lr_scheduler_args", None, SUP, means=[]),
    _k("lr_scheduler", "constant", SUP),
    _k("lr_warmup_steps", 0, SUP),
    _k("lr_decay_steps", 0, SUP),
    _k("lr_scheduler_num_cycles", 1, SUP),
    _k("lr_scheduler_power", 1, SUP),
    _k("lr_scheduler_timescale", None, SUP),
    _k("lr_scheduler_min_lr_ratio", None, SUP),
    _k("scale_weight_norms", None, SUP),
    _k("unet_lr", None, SUP),
    _k("text_encoder_lr", None, SUP),
    # --- network
    _k("network_weights", None, SUP),
    _k("network_module", None, SUP, keep="sd-scripts stops without one; networks.lora is its LoRA"),
    _k("network_dim", None, SUP, means=4),
    _k("network_alpha", 1, SUP, means=1.0),
    _k("network_dropout", None, SUP, means=0.0),
    _k("network_args", None, SUP, means=[]),
    _k("network_train_unet_only", False, SUP),
    _k("network_train_text_encoder_only", False, REF, "training only the text encoders is not offered"),
    _k("dim_from_weights", False, SUP),
    _k("base_weights", None, REF, "merging LoRAs into the model before training is not offered; merge them first "
                                "(python -m training.tools merge)"),
    _k("base_weights_multiplier", None, REF, "goes with base_weights, which is not offered"),
    # --- written by the kohya_ss GUI, not sd-scripts options
    _k("sdxl", False, IGN, "the model family is read from the checkpoint", sd_scripts=False),
    _k("pretrained_model_name_or_path_hash", None, IGN, "not needed", sd_scripts=False),
)

BY_NAME: dict[str, KohyaKey] = {key.name: key for key in KEYS}

# A mapped key's target: the field it is read into and, for switches, the value a true switch means.
MAPPED_TO: dict[str, tuple[str, Any]] = {
    "caption_extention": ("caption_extension", None),
    "validate_every_n_steps": ("validation_every_n_steps", None),
    "use_8bit_adam": ("optimizer_type", "AdamW8bit"),
    "use_lion_optimizer": ("optimizer_type", "Lion"),
}

COMMAND_KEYS = ("output_config",)  # keys that ask the program to do something instead of training


def with_status(status: Status) -> list[KohyaKey]:
    return [key for key in KEYS if key.status == status]


def means_default(key: KohyaKey, value: Any) -> bool:
    """Whether ``value`` asks for what sd-scripts does by default: the default itself, or an empty value for an
    option whose default is unset (sd-scripts tests these with ``if args.x:``)."""
    if value == key.default:
        return True
    return key.default in (None, "", False) and value in ("", [], False)
