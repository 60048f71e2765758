"""Images per second of a tagger and a captioner through the whole captioning pipeline (open the image,
preprocess, run the model, compose, write the caption atomically), at several batch sizes.

    python -m training.caption.bench                      # tiny models: the pipeline's own cost
    python -m training.caption.bench --real-size          # random weights at real size: WD14 ViT-B/16 448, BLIP base
    python -m training.caption.bench --tagger DIR --captioner DIR   # your models

Random weights compute exactly what trained ones of the same shape do, except that a captioner's caption length
follows its weights: the real-size BLIP is made to write exactly ``--tokens`` tokens every time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from training.caption.compose import ComposeOptions
from training.caption.events import EventLog
from training.caption.job import JobOptions, run_job

WD14_TAGS = 10861  # wd-vit-tagger-v3's tag count


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.caption.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--tagger", type=Path, help="a tagger folder (default: one built for the run)")
    parser.add_argument("--captioner", type=Path, help="a captioner folder (default: one built for the run)")
    parser.add_argument("--real-size", action="store_true",
                        help="build random-weight models of real size instead of tiny ones")
    parser.add_argument("--images", type=int, default=32, help="images per measurement (default 32)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=20, help="caption length in tokens (default 20)")
    parser.add_argument("--skip", choices=["tagger", "captioner"], action="append", default=[])
    return parser.parse_args(argv)


def make_images(folder: Path, count: int) -> list[Path]:
    """Photo-sized JPEGs with some texture, so decoding and resizing cost what they do on a real dataset."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (768, 512, 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(path, quality=90)
        paths.append(path)
    return paths


def measure(model, images: list[Path], root: Path, batch: int) -> float:
    """Images per second over ``images``, after one warm-up batch (first calls allocate and pick kernels)."""
    options = JobOptions(root=root, batch_size=batch, compose=ComposeOptions(existing="overwrite"))
    quiet = EventLog(None)
    run_job(model, images[:batch], options, quiet, progress=False)
    started = time.perf_counter()
    summary = run_job(model, images, options, quiet, progress=False)
    seconds = time.perf_counter() - started
    if summary.failed:
        raise SystemExit(f"bench: {summary.failed[0][0].name} failed: {summary.failed[0][1]}")
    return len(images) / seconds


def build_tagger(folder: Path, real_size: bool) -> Path:
    from training.caption.tiny import TinyTag, save_tiny_tagger

    if not real_size:
        return save_tiny_tagger(folder, [TinyTag(f"tag_{i}", 0, channel=i % 3) for i in range(100)], size=448)
    return save_vit_tagger(folder)


def save_vit_tagger(folder: Path) -> Path:
    """A random-weight ViT-B/16 at 448 px with a 10,861-tag head, the shape of wd-vit-tagger-v3, as ONNX."""
    import torch
    from transformers import ViTConfig, ViTModel

    from training.caption.tiny import TinyTag, save_tiny_tagger

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = ViTModel(ViTConfig(image_size=448, patch_size=16), add_pooling_layer=False)
            self.head = torch.nn.Linear(768, WD14_TAGS)

        def forward(self, x):
            hidden = self.vit(pixel_values=x.permute(0, 3, 1, 2) / 127.5 - 1).last_hidden_state
            return torch.sigmoid(self.head(hidden.mean(1)))

    save_tiny_tagger(folder, [TinyTag(f"tag_{i}", 0) for i in range(WD14_TAGS)], size=448)  # the csv
    torch.onnx.export(Tagger().eval(), (torch.zeros(1, 448, 448, 3),), str(folder / "model.onnx"),
                      input_names=["input"], output_names=["output"], dynamo=False, opset_version=17,
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return folder


def build_captioner(folder: Path, real_size: bool, tokens: int) -> Path:
    from training.caption.tiny import save_tiny_blip

    if not real_size:
        return save_tiny_blip(folder)
    return save_blip_base(folder, tokens)


def save_blip_base(folder: Path, tokens: int) -> Path:
    """A random-weight BLIP base (ViT-B/16 at 384 px, 12-layer BERT decoder, BERT's 30,524-token vocab) that writes
    exactly ``tokens`` tokens, none of them special, so every caption costs the same."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    config = BlipConfig()
    text = config.text_config
    specials = {text.pad_token_id: "[PAD]", 100: "[UNK]", 101: "[CLS]", text.sep_token_id: "[SEP]", 103: "[MASK]",
                text.bos_token_id: "[DEC]"}
    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(specials.get(i, f"w{i}") for i in range(text.vocab_size)) + "\n", encoding="utf-8")
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 384, "width": 384}),
                  tokenizer=BertTokenizer(str(vocab), bos_token="[DEC]")).save_pretrained(folder)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    model.generation_config.min_new_tokens = tokens
    model.generation_config.suppress_tokens = sorted(specials)
    model.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"{'real-size random' if args.real_size else 'tiny'} models unless given; {args.images} images of "
          "512x768 per measurement")
    with tempfile.TemporaryDirectory(prefix="caption-bench-") as tmp:
        work = Path(tmp)
        images = make_images(work / "data", args.images)
        if "tagger" not in args.skip:
            from training.caption.tagger import Wd14Tagger

            tagger = Wd14Tagger(args.tagger or build_tagger(work / "tagger", args.real_size))
            for batch in args.batch_sizes:
                rate = measure(tagger, images, work / "data", batch)
                print(f"tagger    batch {batch}: {rate:7.2f} images/s  (load average {_load()})")
        if "captioner" not in args.skip:
            from training.caption.captioner import CaptionOptions, load_captioner

            folder = args.captioner or build_captioner(work / "captioner", args.real_size, args.tokens)
            captioner = load_captioner(folder, CaptionOptions(max_new_tokens=args.tokens))
            for batch in args.batch_sizes:
                rate = measure(captioner, images, work / "data", batch)
                print(f"captioner batch {batch}: {rate:7.2f} images/s  (load average {_load()})")
    return 0


def _load() -> str:
    """The machine's 1-minute load average: other processes on the CPU change these numbers several-fold."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not on Windows
        return "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
