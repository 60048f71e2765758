"""Checks that need the file system but not torch: run before anything heavy loads (the UI uses them too)."""

from __future__ import annotations

from pathlib import Path

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.contract.layout import RunLayout, is_state_dir
from training.contract.run_folder import folder_problem
from training.data.dataset_config import scan_run_dataset
from training.data.folder import DatasetScan
from training.networks.support import refusals

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


def looks_like_path(value: str) -> bool:
    """Hub ids look like 'org/name'; anything with a model suffix, a drive, ~ or more separators is a path."""
    if value.lower().endswith(MODEL_SUFFIXES) or value.startswith(("~", ".", "/", "\\")) or ":" in value:
        return True
    return value.count("/") != 1 or Path(value).exists()


def preflight(cfg: TrainConfig) -> DatasetScan:
    """Refuse a config that cannot run, with one line naming the setting and what to do. Returns the dataset scan
    (done here, before torch loads, so an empty or missing dataset is reported in a second, not after a minute)."""
    if not cfg.pretrained_model_name_or_path:
        raise UserError("pretrained_model_name_or_path is not set: give a base model file or diffusers folder")
    model = Path(cfg.pretrained_model_name_or_path).expanduser()
    if looks_like_path(cfg.pretrained_model_name_or_path) and not model.exists():
        raise UserError(f"pretrained_model_name_or_path: {model} does not exist")
    if not cfg.train_data_dir and not cfg.dataset_config:
        raise UserError("train_data_dir is not set: give the folder that holds your training images")
    data = Path(cfg.train_data_dir).expanduser()
    if not cfg.dataset_config and not data.is_dir():  # a dataset config names its own folders
        raise UserError(f"train_data_dir: folder {data} does not exist")
    if cfg.network_weights and not Path(cfg.network_weights).expanduser().exists():
        raise UserError(f"network_weights: {cfg.network_weights} does not exist")
    if cfg.network_weights and not cfg.network_weights.lower().endswith(".safetensors"):
        raise UserError(f"network_weights: {cfg.network_weights} is not a .safetensors LoRA file")
    if cfg.adaptive_noise_scale is not None and not cfg.noise_offset:
        raise UserError("adaptive_noise_scale adds to noise_offset: set noise_offset too (e.g. 0.05), or unset "
                        "adaptive_noise_scale")
    problems = refusals(cfg.network, cfg.network_dropout)
    if problems:
        raise UserError(problems[0])
    check_outputs(cfg)
    return scan_run_dataset(cfg)


def check_outputs(cfg: TrainConfig) -> None:
    """What every run needs, a dry run too: a folder to write into, a real state to resume from, prompts for the
    samples it is told to make."""
    if not cfg.output_dir:
        raise UserError("output_dir is not set: give the folder where the LoRA and run files go")
    problem = folder_problem(Path(cfg.output_dir))
    if problem:
        raise UserError(problem)
    if cfg.resume and not Path(cfg.resume).expanduser().exists():
        raise UserError(f"resume: {cfg.resume} does not exist")
    if cfg.resume and not is_state_dir(Path(cfg.resume)):
        raise UserError(f"resume: {cfg.resume} is not a saved state folder (no train_state.json in it)")
    if (cfg.sample_every_n_steps or cfg.sample_every_n_epochs) and not cfg.sample_prompts:
        raise UserError("sample_every_n_steps/epochs is set but sample_prompts is empty: add prompts or unset it")


def preset_mismatch(family: str, model: str, preset_name: str, wanted: str | None) -> str | None:
    """One line when a preset was made for another family than the model (an SD1.5 preset's 512 px and clip skip 2
    on an SDXL model, or the reverse), saying what to pick instead; None when it fits or says no family."""
    from training.models.detect import FAMILY_LABELS

    if wanted not in FAMILY_LABELS or wanted == family:
        return None
    label = FAMILY_LABELS.get(family, family)
    return (f"the preset '{preset_name}' is for {FAMILY_LABELS[wanted]} models but {model} is an {label} model; "
            f"use an {label} preset or another base model")


def check_preset_family(model: str, preset: tuple[str, str] | None) -> None:
    """Refuse a preset made for another family than the base model, read from the file header or folder without
    torch; hub ids are checked once loaded."""
    from training.models.detect import detect_family

    if preset is None or not model or not looks_like_path(model) or not Path(model).expanduser().exists():
        return
    problem = preset_mismatch(detect_family(Path(model).expanduser()), model, *preset)
    if problem:
        raise UserError(problem)


def check_run_dir(cfg: TrainConfig, run_dir: Path, overwrite: bool = False) -> None:
    """Never overwrite an earlier run's results: a folder holding a run's LoRA files or states, or saves named like
    this run's, is reused only to resume that run, or with ``overwrite`` (the CLI's --overwrite). A folder whose run
    failed before saving anything can be used again (its log is appended to)."""
    if overwrite:
        if cfg.resume:
            raise UserError("--overwrite deletes the earlier run's saves and resume continues from one of them: "
                            "use one or the other")
        return
    layout = RunLayout(run_dir)
    earlier = layout.saves_of(cfg.output_name)
    if layout.events.exists():
        earlier = earlier or layout.loras() or layout.state_dirs()
    resuming_here = cfg.resume and Path(cfg.resume).resolve().parent == run_dir.resolve()
    if earlier and not resuming_here:
        earlier = sorted(earlier, key=lambda p: (p.is_dir(), p.name))  # LoRA files first: what people look for
        shown = ", ".join(p.name for p in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise UserError(f"output_dir {run_dir} already holds a run ({shown}); choose a new output_dir, set resume "
                        f"to one of its -state folders, or pass --overwrite to replace it")


def advice(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Settings that are valid but usually a mistake: (code, message) pairs shown as warnings, never refused."""
    notes = []
    if cfg.optimizer_type == "Prodigy" and cfg.effective_unet_lr < 0.1:
        notes.append(("prodigy_lr", f"Prodigy sets its own step size and expects learning rates near 1.0; with "
                                    f"{cfg.effective_unet_lr:g} it will barely train"))
    if cfg.network_alpha > cfg.network_dim:
        notes.append(("alpha_above_rank", f"network_alpha {cfg.network_alpha:g} > network_dim {cfg.network_dim}: "
                                          "the LoRA is scaled above 1, which with usual learning rates often "
                                          "ends in NaN; alpha = rank/2 is the common choice"))
    if cfg.network_train_unet_only and cfg.text_encoder_lr:
        notes.append(("text_encoder_lr_unused", "text_encoder_lr is set but network_train_unet_only is on: "
                                                "the text encoder is not trained"))
    if cfg.face_crop_aug_range and cfg.enable_bucket:
        notes.append(("face_crop_unused", "face_crop_aug_range acts only with enable_bucket = false (as in kohya): "
                                          "with buckets it is ignored"))
    notes += [("network_args", note) for note in cfg.network.notes]
    return notes
