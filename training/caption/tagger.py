"""A WD14-style tagger: ``model.onnx`` + ``selected_tags.csv`` run with onnxruntime.

The preprocessing is the one these models were trained with, and a small slip (RGB instead of BGR, 0-1 instead of
0-255, black padding) still gives plausible but worse tags, so it is spelt out here and tested step by step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from training.caption.images import WHITE
from training.caption.tags import TAGS_FILE, Tag, Thresholds, display_name, pick_tags, read_tag_list
from training.contract.errors import UserError

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class TagOptions:
    thresholds: Thresholds = field(default_factory=Thresholds)
    include_rating: bool = False
    escape_parentheses: bool = False


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image as the tagger's input row: padded to a square on white (centred), bicubic to ``size``,
    channels in BGR order, float32 in 0-255 (not normalised), height x width x channels."""
    w, h = img.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), WHITE)
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    rgb = np.asarray(square, dtype=np.float32)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def providers() -> list[str]:
    """CUDA when onnxruntime-gpu is installed (it lists the provider), the CPU otherwise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class Wd14Tagger:
    """Booru tags for a batch of images. ``splits_tags``: its caption is a list of tags that merge one by one."""

    splits_tags = True

    def __init__(self, folder: Path, options: TagOptions = TagOptions()) -> None:
        folder = Path(folder)
        self.options = options
        self.model_path = folder / MODEL_FILE
        self.tags_path = folder / TAGS_FILE
        for needed in (self.model_path, self.tags_path):
            if not needed.is_file():
                raise UserError(f"tagger folder {folder} has no {needed.name}: a WD14 tagger folder holds "
                                f"{MODEL_FILE} and {TAGS_FILE}" + _captioner_hint(folder))
        self.tags: list[Tag] = read_tag_list(self.tags_path)
        self.session = _open_session(self.model_path)
        self.input_name, self.size, self.max_batch = _input_layout(self.session, self.model_path)
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int):
            self._check_output_size(outputs[-1])

    def describe(self, images: list[Image.Image]) -> list[list[str]]:
        """Each image's tags, most confident first, written as they go into a caption."""
        scores = self.scores(images)
        return [[display_name(tag.name, self.options.escape_parentheses)
                 for tag, _ in pick_tags(list(row), self.tags, self.options.thresholds, self.options.include_rating)]
                for row in scores]

    def scores(self, images: list[Image.Image]) -> np.ndarray:
        """One row of tag probabilities per image; a model with a fixed batch size is run that many at a time."""
        rows = []
        step = self.max_batch or len(images)
        for start in range(0, len(images), step):
            batch = np.stack([preprocess(img, self.size) for img in images[start:start + step]])
            rows.append(self.session.run(None, {self.input_name: batch})[0])
        scores = np.concatenate(rows).reshape(len(images), -1)
        self._check_output_size(scores.shape[1])
        return scores

    def _check_output_size(self, outputs: int) -> None:
        if outputs != len(self.tags):
            raise UserError(f"{self.model_path} gives {outputs} scores per image but {self.tags_path} lists "
                            f"{len(self.tags)} tags: the two files come from different models")


def _open_session(model_path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers mean nothing to users
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers())
    except Exception as e:  # onnxruntime raises its own exception types for a file that is not a model
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load {model_path} as an ONNX model ({first}); download it again") from e


def _input_layout(session, model_path: Path) -> tuple[str, int, int | None]:
    """The input's name, its square side and its fixed batch size (None when any size works)."""
    inp = session.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise UserError(f"{model_path} takes input of shape {shape}; a WD14 tagger takes "
                        "[batch, size, size, 3] (square images, channels last)")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return inp.name, shape[1], batch


def _captioner_hint(folder: Path) -> str:
    if (folder / "config.json").is_file():
        return f"; {folder} looks like a transformers captioner: use --captioner {folder}"
    return ""
