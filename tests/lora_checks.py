"""Shared LoRA test helpers: tiny pipelines with trained-looking adapters, export, and the diffusers apply check."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
from tiny_models import build_tiny_pipeline

from training.lora_files.export import build_metadata, kohya_state_dict, save_lora
from training.models.families import FAMILIES
from training.networks.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora

# (family, rank, alpha, extra UNet targets): alpha != rank throughout; sd1 also gets 1x1 (proj_in) and 3x3 (conv1)
# conv targets so the 4-D LoRA layout is exercised. SDXL: UNet + TE1 + TE2; its second case adds the resnet convs and
# the down/upsampler convs ("conv": SGM names input_blocks_3_0_op, output_blocks_2_2_conv) and linear proj_in/out.
SD_CASES = [("sd1", 4, 2.0, ()), ("sd1", 8, 16.0, ("proj_in", "conv1")), ("sd2", 4, 2.0, ()), ("sd2", 8, 16.0, ())]
SDXL_CASES = [("sdxl", 4, 2.0, ()), ("sdxl", 8, 16.0, ("proj_in", "proj_out", "conv1", "conv2", "conv"))]
CASES = SD_CASES + SDXL_CASES


def case_ids(cases: list) -> list[str]:
    return [f"{f}-r{r}-a{int(a)}{'-conv' if x else ''}" for f, r, a, x in cases]


CASE_IDS = case_ids(CASES)


def text_encoders(pipe) -> list:
    """The pipeline's text encoders in kohya order: [text_encoder] or SDXL's [text_encoder, text_encoder_2]."""
    second = getattr(pipe, "text_encoder_2", None)
    return [pipe.text_encoder] + ([second] if second is not None else [])


def lora_pipeline(family: str, rank: int, alpha: float, extra: tuple[str, ...] = (), seed: int = 0):
    """Tiny pipeline with adapters on UNet and every TE, lora_B randomised so every module has a real delta."""
    pipe = build_tiny_pipeline(family)
    add_lora(pipe.unet, UNET_TARGETS + list(extra), rank, alpha)
    for te in text_encoders(pipe):
        add_lora(te, TEXT_ENCODER_TARGETS, rank, alpha)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for model in (pipe.unet, *text_encoders(pipe)):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return pipe


def export_file(pipe, family: str, path: Path, **meta_overrides) -> tuple[Path, dict[str, torch.Tensor], str]:
    fam = FAMILIES[family]
    sd = kohya_state_dict(pipe.unet, text_encoders(pipe), fam)
    config = {"network_dim": 4, "network_alpha": 2.0, "resolution": 512, "output_name": "tiny", "clip_skip": None,
              "learning_rate": 1e-4, "train_batch_size": 2, "gradient_accumulation_steps": 2}
    conv = [t for k, t in sd.items() if k.endswith(".lora_down.weight") and t.ndim == 4 and t.shape[2:] != (1, 1)]
    if conv:  # a LoCon: kohya states the conv rank in network_args
        config["network_args"] = [f"conv_dim={conv[0].shape[0]}"]
    training = {"training_started_at": 1700000000.0, "tag_frequency": {"2_red": {"red": 3}},
                "dataset_dirs": {"2_red": {"n_repeats": 2, "img_count": 3}}}
    meta = {**build_metadata(config, fam, training, state_dict=sd), **meta_overrides}
    digest = save_lora(path, sd, meta)
    return path, sd, digest


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def captured_logs():
    """diffusers/peft log lines and Python warnings, whatever the verbosity the test session set."""
    from diffusers.utils import logging as dlog

    handler, old = _Collect(), dlog.get_verbosity()
    dlog.set_verbosity_info()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler.lines
        handler.lines.extend(str(w.message) for w in caught)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        dlog.set_verbosity(old)


def _weights(pipe) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()}
    for i, te in enumerate(text_encoders(pipe)):
        out.update({f"te{i}.{k}": v.clone() for k, v in te.state_dict().items()})
    return out


def _expected_delta(sd: dict[str, torch.Tensor], name: str, scale: float) -> torch.Tensor:
    down, up = sd[f"{name}.lora_down.weight"].float(), sd[f"{name}.lora_up.weight"].float()
    if down.ndim == 4:  # conv LoRA: down conv followed by the 1x1 up conv
        return scale * (up[:, :, 0, 0] @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
    return scale * (up @ down)


def _module_weight_key(name: str, table: dict) -> str:
    component, path = table[name]
    return f"{'unet' if component == 'unet' else f'te{component}'}.{path}.weight"


def configured_scale(events: list) -> dict[str, float]:
    """The run's configured network_dim and network_alpha from its start event, as apply_with_diffusers takes them."""
    config = next(e for e in events if e["event"] == "start")["config"]
    return {"rank": config["network_dim"], "alpha": config["network_alpha"]}


def apply_with_diffusers(pipe, path: Path, family: str, *, rank: int,
                         alpha: float) -> tuple[set[str], set[str], float, list[str]]:
    """Load a kohya file with diffusers' ``load_lora_weights``, fuse it at scale 1 and compare every weight.

    ``rank`` and ``alpha`` are the configured network_dim and network_alpha: the expected delta's scale comes from
    them, never from the file's own ``.alpha`` tensors, so a wrong alpha written into the file is caught.
    Returns (weights that changed, weights the file's modules should change, worst relative error of a fused delta
    against (alpha/rank)·up@down, diffusers/peft log lines).
    """
    from safetensors.torch import load_file

    from training.lora_files.names import module_lookup

    sd = load_file(str(path))
    table = module_lookup(pipe.unet, text_encoders(pipe), FAMILIES[family])
    before = _weights(pipe)
    with captured_logs() as lines:
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()  # keeps the fused weights, restores the plain module names
    after = _weights(pipe)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    names = {k.partition(".")[0] for k in sd}
    worst = 0.0
    for name in names:
        key = _module_weight_key(name, table)
        delta, want = after[key] - before[key], _expected_delta(sd, name, alpha / rank)
        worst = max(worst, float(torch.linalg.norm(delta - want) / torch.linalg.norm(want)))
    return changed, {_module_weight_key(n, table) for n in names}, worst, lines
