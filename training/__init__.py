"""LoRA training engine. One folder per job, dependencies pointing down (docs/architecture.md):

    programs      __main__ (python -m training), bench, demo, compare, options_doc
    run/          a training run: prepare, the loop and its step, checkpoints, validation, samples, the dry run
    plan/         what a run will do, torch-free: preflight checks, the schedule, the dataset check
    lora_files/   the kohya .safetensors format: key names, export, import, the self-check
    networks/     the adapters injected into the models (LoRA)
    data/ models/ the dataset (folders, captions, buckets, latents) and the base models (families, loading)
    contract/     the torch-free seam the UI uses: config, events, run-folder layout, control, exit codes

Import-light on purpose: importing ``training`` or ``training.contract`` does not import torch.
"""

__version__ = "0.1.0"
