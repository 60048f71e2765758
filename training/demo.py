"""The demo: a tiny random-weight base model and a generated dataset, trained end to end in under a minute on a CPU.

    python -m training.demo            # writes to ./demo-run unless --out is given

It checks that the whole pipeline works on this machine (loading, caching, training, validation, samples, export
and the export self-check). It is a pipeline check, not a useful LoRA: the base model has random weights.
The same tiny models serve the test suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.models.families import TOKENIZER_DIR


def build_tiny_pipeline(family: str = "sd1", prediction_type: str = "epsilon", seed: int = 0):
    """Return a StableDiffusionPipeline with random weights (a few MB)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=3,
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act="gelu" if sd2 else "quick_gelu",
            projection_dim=hidden,
        )
    )
    tokenizer = CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        pad_token="!" if sd2 else "<|endoftext|>",
        model_max_length=77,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


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


DEMO_TOML = """\
# Demo run: a pipeline check on a tiny random-weight model, NOT a useful LoRA.
[model]
pretrained_model_name_or_path = "{model}"

[dataset]
train_data_dir = "{data}"
resolution = "64"
min_bucket_reso = 64
max_bucket_reso = 128
cache_latents = true

validation_every_n_steps = 10

[network]
network_dim = 4
network_alpha = 4

[optimizer]
learning_rate = 1e-3
lr_scheduler = "constant"

[training]
max_train_steps = 40
mixed_precision = "no"
seed = 1

[sample]
sample_prompts = "red, circle;green, circle --d 7"
sample_every_n_steps = 20

[save]
output_dir = "{out}"
output_name = "demo"
save_every_n_steps = 20
"""


def build_demo(root: Path) -> Path:
    """Write the demo model, dataset and config under root; return the config path."""
    model = root / "model"
    if not (model / "model_index.json").exists():
        save_tiny_pipeline(model)
    data = make_image_dataset(root / "dataset", {"5_red": 4, "5_green": 4})
    out = root / "run"
    n = 1
    while (out / "events.jsonl").exists():
        n += 1
        out = root / f"run-{n}"
    config = root / "demo.toml"
    config.write_text(DEMO_TOML.format(model=model.as_posix(), data=data.as_posix(), out=out.as_posix()),
                      encoding="utf-8")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-run"), help="folder for the demo files")
    args = parser.parse_args(argv)
    from training.__main__ import main as train_main
    from training.__main__ import quiet_libraries

    quiet_libraries()
    config = build_demo(args.out)
    print(f"demo config: {config} (tiny random-weight model: a pipeline check, not a useful LoRA)")
    return train_main(["--config", str(config)])


if __name__ == "__main__":
    sys.exit(main())
