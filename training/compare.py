"""Before/after grid for a LoRA: the run's own base model, one prompt and seed, several LoRA strengths side by side.

    python -m training.compare --config <run>/job.toml --lora <run>/name.safetensors \
        --prompt "red, circle" --seed 7 --out grid.png [--strengths 0,0.5,1] [--steps 20]

The base model loads as the run loaded it (path, v2 / v_parameterization, clip_skip, resolution); the LoRA goes in
through the same kohya -> peft import a continued run uses, and each image is rendered by the trainer's own sample
code with the same seed. Strength s scales every module to s * alpha / rank: 0 is exactly the base model, 1 the LoRA
as trained. Runs on CUDA when available, else on the CPU.

Exit status: 0 grid written; 2 bad input (one line naming the file or setting); 1 anything else; 130 interrupted.
Torch is imported only after the input has been checked, so the UI can import ``parse_strengths`` and ``cell_boxes``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.contract.atomic import atomic_path
from training.contract.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from training.contract.config import TrainConfig

DEFAULT_STRENGTHS = (0.0, 0.5, 1.0)
MAX_STRENGTHS = 8
MAX_ABS_STRENGTH = 4.0  # WebUIs accept negative and >1 weights; beyond this the image is noise
MAX_STEPS = 150
MARGIN = 8  # pixels around and between cells
LABEL_HEIGHT = 24  # pixels for the strength label under each cell


@dataclass
class CompareJob:
    cfg: TrainConfig
    lora: Path
    prompt: str
    negative: str
    seed: int
    strengths: list[float]
    steps: int
    cfg_scale: float
    sampler: str
    out: Path


def parse_strengths(text: str) -> list[float]:
    """'0, 0.5, 1' -> [0.0, 0.5, 1.0]; a UserError names the bad part."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError("--strengths is empty: give LoRA strengths split by commas, e.g. 0,0.5,1")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--strengths: {part!r} is not a number (e.g. 0,0.5,1)") from None
        if not math.isfinite(value) or abs(value) > MAX_ABS_STRENGTH:
            raise UserError(f"--strengths: {part} is outside -{MAX_ABS_STRENGTH:g} to {MAX_ABS_STRENGTH:g}")
        values.append(value)
    if len(values) > MAX_STRENGTHS:
        raise UserError(f"--strengths: {len(values)} values, at most {MAX_STRENGTHS} fit in one grid")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.compare",
                                     description="Render one prompt with a LoRA at several strengths into a grid.")
    parser.add_argument("--config", type=Path, required=True, help="the run's job.toml (base model, clip_skip, size)")
    parser.add_argument("--lora", type=Path, required=True, help="the LoRA .safetensors file")
    parser.add_argument("--prompt", required=True, help="the prompt to render")
    parser.add_argument("--negative", default="", help="negative prompt (default: none)")
    parser.add_argument("--seed", type=int, default=1234, help="noise seed, the same for every strength")
    parser.add_argument("--strengths", default="0,0.5,1", help="LoRA strengths split by commas (default 0,0.5,1)")
    parser.add_argument("--steps", type=int, default=20, help=f"sampling steps, 1 to {MAX_STEPS} (default 20)")
    parser.add_argument("--cfg-scale", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    parser.add_argument("--sampler", choices=["ddim", "euler", "euler_a", "dpmsolver++"], default=None,
                        help="sampler (default: the run's sample_sampler)")
    parser.add_argument("--out", type=Path, required=True, help="the grid .png to write")
    return parser.parse_args(argv)


def check_job(args: argparse.Namespace) -> CompareJob:
    """Everything that can be checked without torch, so bad input costs a second, not a model load."""
    from training.contract.config_io import load_config

    cfg, _notes = load_config(args.config)
    if not cfg.pretrained_model_name_or_path:
        raise UserError(f"{args.config}: pretrained_model_name_or_path is not set; the grid needs the base model")
    lora = args.lora.expanduser()
    if not lora.is_file():
        raise UserError(f"--lora {lora}: file not found")
    if lora.suffix.lower() != ".safetensors":
        raise UserError(f"--lora {lora.name}: expected a .safetensors LoRA file")
    if not args.prompt.strip():
        raise UserError("--prompt is empty: give the prompt to render")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed {args.seed}: use a whole number from 0")
    if not 1 <= args.steps <= MAX_STEPS:
        raise UserError(f"--steps {args.steps}: use 1 to {MAX_STEPS}")
    if not 0 <= args.cfg_scale <= 30:
        raise UserError(f"--cfg-scale {args.cfg_scale:g}: use 0 to 30")
    out = args.out.expanduser()
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out.name}: the grid is a .png file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out.parent}: cannot create the folder ({err.strerror or err})") from None
    check_family_before_loading(cfg.pretrained_model_name_or_path, lora)
    return CompareJob(cfg, lora, args.prompt.strip(), args.negative, args.seed, parse_strengths(args.strengths),
                      args.steps, args.cfg_scale, args.sampler or cfg.sample_sampler, out)


def set_strength(models: list[Any], strength: float) -> int:
    """Scale every LoRA layer to strength * alpha / rank (peft's set_scale); returns how many layers it set."""
    from peft.tuners.lora import LoraLayer

    from training.networks.lora import ADAPTER

    layers = [m for model in models for m in model.modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]
    for layer in layers:
        layer.set_scale(ADAPTER, strength)
    return len(layers)


def check_family(metadata: dict[str, str], family: Any) -> None:
    """A LoRA made for SD2 on an SD1 base, or for SDXL on a non-SDXL base (and the reverse), is refused: WebUIs would
    skip or misapply it. Files without kohya's markers are taken as they come (the module-name lookup still checks
    them)."""
    version = metadata.get("ss_base_model_version", "")
    if version and version.startswith("sdxl") != (family.name == "sdxl"):
        raise UserError(f"made for {version}, but the run's base model is {family.name}; compare it on a base of "
                        f"its own family")
    marker = metadata.get("ss_v2")
    if marker in ("True", "False") and (marker == "True") != bool(family.v2):
        made_for = metadata.get("ss_base_model_version") or ("SD2.x" if marker == "True" else "SD1.x")
        raise UserError(f"made for {made_for} (ss_v2 = {marker}), but the run's base model is {family.name}; "
                        f"compare it on a base of its own family")


def check_family_before_loading(model: str, lora: Path) -> None:
    """check_family from the two files' headers, torch-free, so a LoRA of another family is refused in a second.
    A hub id or a model whose header says nothing is left to the same check after loading (in render)."""
    from training.contract import st_header
    from training.models.detect import detect_family
    from training.models.families import FAMILIES

    try:
        metadata = st_header.read_header(lora)[0].get("__metadata__") or {}
        family = FAMILIES[detect_family(Path(model).expanduser())]
    except (OSError, ValueError, KeyError, UserError):
        return
    try:
        check_family(metadata, family)
    except UserError as err:
        raise UserError(f"--lora {lora.name}: {err}") from None


def compute_dtype(cfg: TrainConfig, device: Any) -> Any:
    """The run's mixed precision on CUDA (as its samples were made); float32 on the CPU."""
    import torch

    if device.type != "cuda" or cfg.mixed_precision == "no":
        return torch.float32
    if cfg.mixed_precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def render(job: CompareJob, log=print) -> list[Image.Image]:
    """One image per strength, same prompt and seed, through training.run.samples.generate_samples."""
    import torch
    from PIL import Image

    from training.contract.prompts import SamplePrompt
    from training.lora_files.importer import load_kohya_into_peft, read_kohya
    from training.models.loading import load_base_model
    from training.run.samples import generate_samples

    cfg = job.cfg
    tensors, metadata = read_kohya(job.lora)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log(f"loading base model {cfg.pretrained_model_name_or_path} ({device.type})")
    base = load_base_model(cfg.pretrained_model_name_or_path, cfg.v2, cfg.v_parameterization)
    try:
        check_family(metadata, base.family)
        report = load_kohya_into_peft(tensors, base.unet, base.text_encoders, base.family)
    except UserError as err:
        raise UserError(f"--lora {job.lora.name}: {err}") from None
    parts = ", ".join(f"{k} {v}" for k, v in report.per_component.items())
    log(f"LoRA {job.lora.name}: {report.modules} modules ({parts})")
    for model in (base.unet, *base.text_encoders, base.vae):
        model.to(device).eval()
    width, height = cfg.resolution_wh
    prompt = SamplePrompt(job.prompt, job.negative, width, height, job.seed, job.cfg_scale, job.steps)
    dtype = compute_dtype(cfg, device)
    images = []
    with tempfile.TemporaryDirectory(prefix=".compare-", dir=job.out.parent) as tmp:
        for i, strength in enumerate(job.strengths):
            set_strength([base.unet, *base.text_encoders], strength)
            paths = generate_samples(base, base.unet, base.text_encoders, [prompt], job.sampler, cfg.clip_skip,
                                     Path(tmp) / str(i), "compare", 0, None, device, dtype)
            with Image.open(paths[0]) as img:
                images.append(img.convert("RGB"))
            log(f"strength {strength:g}: done")
    return images


def cell_boxes(count: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each image in the grid: one row, MARGIN around and between cells."""
    return [(MARGIN + i * (width + MARGIN), MARGIN, MARGIN + i * (width + MARGIN) + width, MARGIN + height)
            for i in range(count)]


def strength_label(strength: float, width: int, font: Any, draw: Any) -> str:
    """'LoRA strength 0.5', shortened to what fits under a small cell."""
    for text in (f"LoRA strength {strength:g}", f"strength {strength:g}", f"{strength:g}"):
        if draw.textlength(text, font=font) <= width:
            return text
    return f"{strength:g}"


def make_grid(images: list[Image.Image], strengths: list[float]) -> Image.Image:
    """The images in one row on white, each labelled with its strength underneath."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = images[0].size
    boxes = cell_boxes(len(images), width, height)
    canvas = Image.new("RGB", (boxes[-1][2] + MARGIN, height + 2 * MARGIN + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    for image, box, strength in zip(images, boxes, strengths, strict=True):
        canvas.paste(image, box[:2])
        text = strength_label(strength, width, font, draw)
        left = box[0] + (width - draw.textlength(text, font=font)) / 2
        draw.text((left, box[3] + 4), text, fill="black", font=font)
    return canvas


def write_grid(grid: Image.Image, job: CompareJob) -> None:
    """PNG with what made it in a text chunk, written to a temp file and renamed (never a half-written grid)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("loraforge_compare", json.dumps({
        "lora": job.lora.name, "base_model": job.cfg.pretrained_model_name_or_path, "prompt": job.prompt,
        "negative": job.negative, "seed": job.seed, "strengths": job.strengths, "steps": job.steps,
        "cfg_scale": job.cfg_scale, "sampler": job.sampler, "clip_skip": job.cfg.clip_skip,
        "cell_size": list(job.cfg.resolution_wh)}))
    with atomic_path(job.out) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        job = check_job(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from training.__main__ import quiet_libraries

    quiet_libraries()
    try:
        images = render(job, log=lambda line: print(line, file=sys.stderr, flush=True))
        write_grid(make_grid(images, job.strengths), job)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as err:
        import traceback

        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"error: {type(err).__name__}: {first}", file=sys.stderr)
        return 1
    print(job.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
