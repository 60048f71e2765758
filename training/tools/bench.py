"""Benchmark of the LoRA tools: seconds and peak RSS for merging a rank-32 LoRA into full-size SD1.5 and SDXL
checkpoints and for resizing an SDXL LoRA, each in its own child process (``python -m training.tools``) so that
its peak RSS is its own.

    python -m training.tools.bench [--family sd1 sdxl] [--rank 32] [--resize-rank 8] [--workdir /tmp] [--extract]

The checkpoints have random fp16 weights in the original LDM/SGM layout, with every key and shape of the real
files (from the diffusers configs in assets/models; the VAE keeps its diffusers names, which only the layout of
untouched bytes sees). They are written under --workdir and deleted afterwards (SDXL needs about 14 GB free).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.lora_files.names import diffusers_to_sgm
from training.models.families import FAMILIES
from training.tools.checkpoint_names import TEXT_ENCODERS, UNET_KEY, index_checkpoint
from training.tools.stream import Entry, tensor_writer, write_stream


def meta_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Every key and shape of a single-file checkpoint of ``family``, from models built on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = FAMILIES[family].config_dir
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / sub))
                    for sub in ("text_encoder", "text_encoder_2") if (folder / sub).is_dir()]
    up_attention = {i: hasattr(block, "attentions") for i, block in enumerate(unet.up_blocks)}
    shapes = {}
    for key, param in unet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        sgm = diffusers_to_sgm(module, unet.config.layers_per_block, up_attention)
        if sgm is not None:
            shapes[f"{UNET_KEY}{sgm}.{leaf}"] = tuple(param.shape)
    shapes.update({f"first_stage_model.{k}": tuple(v.shape) for k, v in vae.state_dict().items()})
    for (prefix, _, open_clip), encoder in zip(TEXT_ENCODERS[family], encoders, strict=True):
        hf = {k.removeprefix("text_model."): tuple(v.shape) for k, v in encoder.state_dict().items()}
        shapes.update(open_clip_shapes(hf, prefix) if open_clip else {prefix + k: s for k, s in hf.items()})
    return shapes


def open_clip_shapes(hf: dict[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    """OpenCLIP's layout of a CLIP text encoder: q, k and v fused into in_proj (3 x width rows)."""
    width = hf["final_layer_norm.weight"][0]
    out = {prefix + "token_embedding.weight": hf["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": hf["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": (width,), prefix + "ln_final.bias": (width,),
           prefix + "text_projection": (width, width)}
    layers = {int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        out[dst + "attn.in_proj_weight"], out[dst + "attn.in_proj_bias"] = (3 * width, width), (3 * width,)
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for kind in ("weight", "bias"):
                out[f"{dst}{ours}.{kind}"] = hf[f"{src}{theirs}.{kind}"]
    return out


def random_writer(shape: tuple[int, ...], seed: int):
    def make() -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(shape, generator=gen) * 0.02).half()
    return tensor_writer(make)


def write_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> None:
    entries = [Entry(key, "F16", shape, random_writer(shape, seed + n))
               for n, (key, shape) in enumerate(shapes.items())]
    write_stream(path, entries, {"format": "pt"}, f"the benchmark checkpoint {path.name}")


def write_lora(path: Path, shapes: dict[str, tuple[int, ...]], family: str, rank: int) -> int:
    """A random LoRA of ``rank`` on kohya's default targets (transformer blocks and text encoders)."""
    from training.tools.lorafile import family_metadata, network_metadata, save

    targets = {t.canonical: t for t in index_checkpoint(shapes, family).values() if t.kind in ("transformer", "text")}
    gen = torch.Generator().manual_seed(0)
    modules = {}
    for name, target in targets.items():
        out_dim, rest = target.shape[0], target.shape[1:]
        modules[name] = {"lora_down.weight": torch.randn(rank, *rest, generator=gen) * 0.01,
                         "lora_up.weight": torch.randn(out_dim, rank, *([1, 1] if len(rest) == 3 else []),
                                                       generator=gen) * 0.01,
                         "alpha": torch.tensor(float(rank))}
    save(path, modules, {**family_metadata(family), **network_metadata(modules, dynamic=False)})
    return len(modules)


def timed(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of ``python -m training.tools ARGS`` as a child process. The peak is the child's
    own VmHWM, sampled until it exits: getrusage's figure for a child also counts the parent's memory, which the
    child shares until it execs."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "training.tools", *args], stdout=subprocess.DEVNULL)
    peak_kib = 0
    while child.poll() is None:
        peak_kib = max(peak_kib, high_water_kib(child.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)} failed with status {child.returncode}")
    return seconds, peak_kib / 1024**2


def high_water_kib(pid: int) -> int:
    """The process's peak resident memory so far (Linux /proc), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1])


def bench_family(family: str, rank: int, resize_rank: int, workdir: Path, extract: bool) -> list[str]:
    rows = []
    shapes = meta_shapes(family)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"toolsbench-{family}-") as tmp:
        folder = Path(tmp)
        model, lora, out = folder / "model.safetensors", folder / "lora.safetensors", folder / "merged.safetensors"
        start = time.perf_counter()
        write_checkpoint(model, shapes)
        size = model.stat().st_size / 1e9
        print(f"{family}: wrote a {size:.2f} GB random checkpoint in {time.perf_counter() - start:.0f} s", flush=True)
        count = write_lora(lora, shapes, family, rank)
        seconds, rss = timed(["merge", "--model", str(model), "--lora", str(lora), "--out", str(out)])
        rows.append(f"| merge a rank-{rank} LoRA ({count} modules) into {family} ({size:.2f} GB fp16) | "
                    f"{seconds:.1f} | {rss:.2f} |")
        print(rows[-1], flush=True)
        if family == "sdxl":
            seconds, rss = timed(["resize", "--lora", str(lora), "--rank", str(resize_rank),
                                  "--out", str(folder / "resized.safetensors")])
            rows.append(f"| resize the {family} rank-{rank} LoRA ({lora.stat().st_size / 1e6:.0f} MB) to rank "
                        f"{resize_rank} | {seconds:.1f} | {rss:.2f} |")
            print(rows[-1], flush=True)
        if extract:
            rows.append(bench_extract(family, shapes, model, folder, rank))
            print(rows[-1], flush=True)
    return rows


def bench_extract(family: str, shapes: dict[str, tuple[int, ...]], base: Path, folder: Path, rank: int) -> str:
    """Extract from two unrelated random checkpoints: every difference is full rank, as costly as a real one."""
    tuned = folder / "tuned.safetensors"
    write_checkpoint(tuned, shapes, seed=len(shapes))
    seconds, rss = timed(["extract", "--base", str(base), "--tuned", str(tuned), "--rank", str(rank),
                          "--out", str(folder / "extracted.safetensors")])
    return f"| extract a rank-{rank} LoRA from two {family} checkpoints | {seconds:.1f} | {rss:.2f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", nargs="+", default=["sd1", "sdxl"], choices=("sd1", "sd2", "sdxl"))
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--resize-rank", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--extract", action="store_true", help="also time extract (writes a second checkpoint)")
    args = parser.parse_args(argv)
    rows = ["| operation | seconds | peak RSS (GB) |", "|---|---:|---:|"]
    for family in args.family:
        free = shutil.disk_usage(args.workdir).free / 1e9
        need = 15 if family == "sdxl" else 5
        if free < need:
            print(f"{family}: skipped, {free:.0f} GB free in {args.workdir}, about {need} GB needed")
            continue
        rows += bench_family(family, args.rank, args.resize_rank, args.workdir, args.extract)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
