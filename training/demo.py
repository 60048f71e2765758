"""The demo: a tiny random-weight base model and a small bundled dataset, trained end to end on a CPU.

    python -m training.demo                  # prepare ./demo-run, then train into a fresh demo-run/run-N folder
    python -m training.demo --prepare DIR    # only write DIR/model, DIR/dataset/2_lfbot and DIR/demo.toml

It checks that the whole pipeline works on this machine (loading, caching, buckets, training, validation, samples,
export and the export self-check). It is a pipeline check, not a useful LoRA: the base model has random weights.
``--prepare`` is what the UI's *Try the demo* runs in a child process (the UI process never imports torch); it is
idempotent, and fast when DIR already holds a complete demo: nothing is rebuilt, torch is not even imported.
The same tiny models serve the test suite. Imports stay torch-free at module level (the UI imports DEMO_LABEL).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training.contract.layout import RunLayout
from training.models.families import ASSETS, TOKENIZER_DIR


def build_tiny_pipeline(family: str = "sd1", prediction_type: str = "epsilon", seed: int = 0):
    """Return a StableDiffusionPipeline (StableDiffusionXLPipeline for ``"sdxl"``) with random weights (a few MB)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if family == "sdxl":
        return build_tiny_sdxl_pipeline(seed)
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    hidden = 32
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=(2, 4) if sd2 else 4,
        use_linear_projection=sd2,
        norm_num_groups=8,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_tiny_clip_config(hidden, "gelu" if sd2 else "quick_gelu", hidden))
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tiny_tokenizer("!" if sd2 else "<|endoftext|>"),
        scheduler=_tiny_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A tiny StableDiffusionXLPipeline shaped like SDXL where it matters: two text encoders of different widths
    (CLIP-L-like TE1 padding with <|endoftext|>, OpenCLIP-like TE2 with a projection, padding with "!"), the UNet's
    text_time micro-conditioning, a level without attention, and two transformer blocks per layer in another."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    te1_width, te2_width, pooled_width, time_dim = 32, 48, 24, 8
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=te1_width + te2_width,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_width,
        norm_num_groups=8,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=CLIPTextModel(_tiny_clip_config(te1_width, "quick_gelu", pooled_width)),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_clip_config(te2_width, "gelu", pooled_width)),
        tokenizer=_tiny_tokenizer("<|endoftext|>"),
        tokenizer_2=_tiny_tokenizer("!"),
        unet=unet,
        scheduler=_tiny_scheduler("epsilon"),
    )


def _tiny_vae(**extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                         norm_num_groups=4, sample_size=64, **extra)


def _tiny_clip_config(width: int, act: str, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_attention_heads=4, num_hidden_layers=3,
                          vocab_size=49408, max_position_embeddings=77, hidden_act=act, projection_dim=projection)


def _tiny_tokenizer(pad: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), pad_token=pad,
                         model_max_length=77)


def _tiny_scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         prediction_type=prediction_type, clip_sample=False, steps_offset=1)


def save_tiny_pipeline(path: Path, family: str = "sd1", prediction_type: str = "epsilon") -> Path:
    """Write a tiny pipeline as a diffusers folder and return its path."""
    build_tiny_pipeline(family, prediction_type).save_pretrained(path)
    return path


def make_image_dataset(root: Path, concepts: dict[str, int] | None = None, size=(64, 64), captions=True) -> Path:
    """Write a small kohya-style dataset: ``root/<repeats>_<name>/img_<i>.png`` with ``.txt`` captions.

    Images are simple coloured shapes so that a LoRA can learn them quickly.
    """
    from PIL import Image, ImageDraw

    concepts = concepts or {"2_red": 3}
    palette = [(220, 40, 40), (40, 160, 60), (40, 60, 220), (230, 200, 30)]
    for c, (folder, count) in enumerate(concepts.items()):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = Image.new("RGB", size, (255, 255, 255))
            draw = ImageDraw.Draw(img)
            w, h = size
            draw.ellipse((w // 8 + i, h // 8, w - w // 8, h - h // 8 - i), fill=palette[(c + i) % len(palette)])
            img.save(d / f"img_{i}.png")
            if captions:
                name = folder.split("_", 1)[-1]
                (d / f"img_{i}.txt").write_text(f"{name}, circle, variant {i}", encoding="utf-8")
    return root


# --- the demo folder: model/, dataset/<repeats>_<concept>/, demo.toml

DEMO_LABEL = "Pipeline check on a tiny random model — not a useful LoRA"
DEMO_CONFIG = "demo.toml"  # in the demo folder: the run settings, pointing at the model and dataset beside it
BUNDLED_DATASET = ASSETS / "demo_dataset" / "lfbot"  # made by assets/demo_dataset/build.py
CONCEPT_FOLDER = "2_lfbot"  # kohya folder name: 2 repeats of the concept "lfbot"
DEMO_SAMPLE = "--w 64 --h 64 --s 6"  # per sample prompt: the smallest size the sampler makes, few steps
MODEL_MARKER = "loraforge-demo.json"  # written last into the model folder: its presence means "complete"
MODEL_VERSION = 1  # bump when build_tiny_pipeline changes, so older demo folders get a fresh model
MODEL_FILES = ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
               "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json")


def demo_settings(model: Path, data: Path, out: Path) -> dict[str, dict[str, object]]:
    """The demo's config by section, sized for a CPU: 96 px in three aspect buckets, 48 steps, validation points and
    saves every few steps, so every part of a real run shows up within seconds. Samples are the costly part on a
    busy CPU (each one a full denoising loop), so there are two rounds, halfway and at the end, of two small images
    with few steps: enough to see that sampling works, not to judge the LoRA."""
    return {
        "model": {"pretrained_model_name_or_path": model.as_posix()},
        "dataset": {"train_data_dir": data.as_posix(), "resolution": "96", "enable_bucket": True,
                    "min_bucket_reso": 64, "max_bucket_reso": 128, "bucket_reso_steps": 32,
                    "shuffle_caption": True, "keep_tokens": 1, "cache_latents": True,
                    "validation_every_n_steps": 8},
        "network": {"network_dim": 4, "network_alpha": 2.0},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-3, "lr_scheduler": "constant"},
        "training": {"train_batch_size": 2, "max_train_steps": 48, "mixed_precision": "no", "seed": 1,
                     "max_data_loader_n_workers": 0},
        "sample": {"sample_prompts": f"lfbot, robot, white background {DEMO_SAMPLE};"
                                     f"lfbot, robot, arms up, outdoors, sky, grass --d 7 {DEMO_SAMPLE}",
                   "sample_every_n_steps": 24, "sample_sampler": "euler_a"},
        "save": {"output_dir": out.as_posix(), "output_name": "demo", "save_every_n_steps": 16},
    }


def demo_toml(model: Path, data: Path, out: Path) -> str:
    import tomli_w

    header = (f"# Demo run: {DEMO_LABEL}.\n# The base model has random weights; this checks that loading, training, "
              "sampling and saving work here.\n\n")
    return header + tomli_w.dumps(demo_settings(model, data, out))


def model_complete(folder: Path) -> bool:
    """Every file loading needs is there, and the marker written after them says this model version."""
    try:
        marker = json.loads((folder / MODEL_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("version") == MODEL_VERSION and all((folder / f).is_file() for f in MODEL_FILES)


def dataset_complete(concept: Path) -> bool:
    """Every bundled file is there (by name: caption edits made in the UI are kept)."""
    return concept.is_dir() and all((concept / f.name).is_file() for f in bundled_files())


def bundled_files() -> list[Path]:
    files = sorted(p for p in BUNDLED_DATASET.iterdir() if p.suffix in (".png", ".txt"))
    if not files:
        raise OSError(f"the bundled demo dataset {BUNDLED_DATASET} is empty or missing")
    return files


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished temp folder into place. Another process may have finished the same folder first: theirs
    is as good as ours, so ours is dropped."""
    if target.exists():
        shutil.rmtree(target)
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_model(folder: Path) -> bool:
    """Write the tiny random-weight model as a diffusers folder (the loading path real models take); True when it
    was built now. Built in a temp folder and moved into place, so a crash never leaves a half model that looks
    complete."""
    if model_complete(folder):
        return False
    from training.__main__ import quiet_libraries

    quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=folder.parent))
    try:
        save_tiny_pipeline(tmp)
        (tmp / MODEL_MARKER).write_text(json.dumps({"version": MODEL_VERSION, "note": DEMO_LABEL}), encoding="utf-8")
        _replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def prepare_dataset(root: Path) -> bool:
    """Copy the bundled sample dataset to root/<CONCEPT_FOLDER>; True when it was copied now."""
    if dataset_complete(root / CONCEPT_FOLDER):
        return False
    tmp = Path(tempfile.mkdtemp(prefix=".dataset-", dir=root.parent))
    try:
        (tmp / CONCEPT_FOLDER).mkdir()
        for src in bundled_files():
            shutil.copyfile(src, tmp / CONCEPT_FOLDER / src.name)
        _replace_dir(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


@dataclass
class PreparedDemo:
    config: Path
    built_model: bool
    copied_dataset: bool

    def describe(self) -> str:
        model = "built" if self.built_model else "already there"
        data = "copied" if self.copied_dataset else "already there"
        return f"demo ready: {self.config} (tiny model {model}, sample dataset {data}; {DEMO_LABEL})"


def prepare_demo(root: Path) -> PreparedDemo:
    """Make root hold a complete demo (model, dataset, demo.toml); rebuild only what is missing."""
    from training.contract.atomic import write_atomic

    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    built = prepare_model(root / "model")
    copied = prepare_dataset(root / "dataset")
    config = root / DEMO_CONFIG
    text = demo_toml(root / "model", root / "dataset", root / "run")
    if not config.is_file() or config.read_text(encoding="utf-8") != text:
        write_atomic(config, text)
    return PreparedDemo(config, built, copied)


def fresh_run_dir(root: Path) -> Path:
    """root/run, or root/run-2, run-3, ...: the trainer never reuses a folder that holds a run."""
    out, n = root / "run", 1
    while RunLayout(out).events.exists():
        n += 1
        out = root / f"run-{n}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-run"), help="folder for the demo files and runs")
    parser.add_argument("--prepare", type=Path, metavar="DIR",
                        help="only write the demo model, dataset and DIR/demo.toml (no training); fast when done")
    args = parser.parse_args(argv)
    root = (args.prepare or args.out).expanduser().resolve()
    try:
        prepared = prepare_demo(root)
    except ImportError as err:
        print(f"error: cannot build the demo model: {err} (install the torch build for your GPU, see README.md)",
              file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: cannot prepare the demo in {root}: {err}", file=sys.stderr)
        return 1
    print(prepared.describe(), flush=True)
    if args.prepare:
        return 0
    from training.__main__ import main as train_main

    out = fresh_run_dir(root)
    return train_main(["--config", str(prepared.config), "--set", f"output_dir={json.dumps(out.as_posix())}"])


if __name__ == "__main__":
    sys.exit(main())
