"""The torch-free engine functions the UI calls in its own process, re-exported as the UI's one door.

Everything else the UI needs from the engine is the rest of ``training.contract`` (config, events, run-folder
layout, control, exit codes). These are the checks that give an answer before a run starts, as a run would give
it: the dataset folder rules, the dataset check and its step plan, the base model's family, the preflight, the
preset/family match, a config's LoRA file size and run length, and the limits of the before/after grid. Each stays
defined where the engine uses it; this module only names them for the UI. Nothing in the engine imports it.

Importing it costs no torch (a test imports all of ``app/`` with torch made unimportable).
"""

from training.compare import MAX_STEPS as COMPARE_MAX_STEPS
from training.compare import parse_strengths
from training.data.folder import CONCEPT_DIR, IMAGE_EXTENSIONS, concept_folders, image_files
from training.demo import DEMO_CONFIG, DEMO_LABEL
from training.models.detect import FAMILY_LABELS, detect_family
from training.plan.dataset_check import NoTrainingImages, check_dataset, md_escape
from training.plan.estimates import LoraSize, lora_size, total_steps, trained_parts
from training.plan.preflight import looks_like_path, preflight, preset_mismatch
from training.run.dry_run import check_config as dry_run_preflight

__all__ = [
    "COMPARE_MAX_STEPS",
    "CONCEPT_DIR",
    "DEMO_CONFIG",
    "DEMO_LABEL",
    "FAMILY_LABELS",
    "IMAGE_EXTENSIONS",
    "LoraSize",
    "NoTrainingImages",
    "check_dataset",
    "concept_folders",
    "detect_family",
    "dry_run_preflight",
    "image_files",
    "looks_like_path",
    "lora_size",
    "md_escape",
    "parse_strengths",
    "preflight",
    "preset_mismatch",
    "total_steps",
    "trained_parts",
]
