"""Results of finished runs, as the Results tab shows them: saves, LoRA headers and WebUI copies.

Torch-free: a LoRA's rank, alpha and metadata come from its safetensors header plus the few bytes of each 0-dim
alpha tensor. The before/after grid is app/compare.py.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.runs import RUNS_DIR, SavePoint, run_folder
from app.supervisor import JobSupervisor
from training.contract import st_header
from training.contract.atomic import atomic_path, write_atomic, write_bytes_atomic
from training.contract.errors import UserError
from training.contract.events import Checkpoint, Done, Sample, read_events
from training.contract.layout import RunLayout
from training.contract.lora_check import SelfCheck
from training.contract.network import NetworkArgsError, parse_network

SETTINGS_FILE = "ui-settings.json"
WEBUI_FOLDER_KEY = "webui_lora_folder"
ALPHA_FORMATS = {"F16": "<e", "F32": "<f", "F64": "<d"}
# Run folders written before checkpoint events carried ``check_result`` have only the sentence: its numbers are read
# back for those alone.
LEGACY_CHECK_RE = re.compile(r"(\d+) of (\d+) modules matched")
EPOCH_SAVE_RE = re.compile(r"-(\d{6})$")  # kohya's per-epoch save name, <output_name>-000003
PROBLEMS_SHOWN = 5
# Each network type's tensors, as kohya (LoRA/LoCon) and LyCORIS (LoHa, LoKr) name them: a module's type is told by
# the first marker it holds.
ALGO_MARKERS = (("LoRA", "lora_down.weight"), ("LoHa", "hada_w1_a"), ("LoKr", "lokr_w1"), ("LoKr", "lokr_w1_a"))
KNOWN_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale", "hada_w1_a",
               "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b",
               "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
RANK_AXES = (("lora_down.weight", 0), ("hada_w1_b", 0), ("lokr_w2_b", 0), ("lokr_w1_b", 0))
# The UNet's 3x3 convolutions by kohya name: diffusers (resnets' conv1/conv2, samplers' conv, conv_in/conv_out) and
# SGM for SDXL (in_layers.2/out_layers.3, a downsampler's op, an upsampler's conv, input_blocks.0.0, out.2).
CONV_NAME_RE = re.compile(r"(_conv[12]?|_in_layers_2|_out_layers_3|_op|^lora_unet_conv_(in|out)|"
                          r"^lora_unet_input_blocks_0_0|^lora_unet_out_2)$")
PREVIEW_SUFFIX = ".preview.png"


@dataclass
class SaveInfo:
    """One saved LoRA of a run."""

    path: Path
    step: int | None
    epoch: int | None  # epochs completed at save time (see app.runs.SavePoint)
    size: int
    check: str | None  # the self-check sentence ("28 of 28 modules matched")
    final: bool
    check_result: SelfCheck | None = None  # the self-check's numbers; None for run folders older than the record

    @property
    def at(self) -> SavePoint:
        return SavePoint(self.step, self.epoch)

    @property
    def kind(self) -> str:
        """final, epoch N or step N. Only whether it is a per-epoch save comes from the name (the event does not say);
        N comes from the checkpoint event, and from the name only for a file that has no event."""
        if self.final:
            return "final"
        m = EPOCH_SAVE_RE.search(self.path.stem)
        if m:
            return f"epoch {self.epoch if self.epoch is not None else int(m.group(1))}"
        return f"step {self.step}" if self.step is not None else "save"


@dataclass
class LoraReport:
    """What a LoRA file says about itself (header only), plus the self-check made when it was saved."""

    path: Path
    size: int
    check: str | None
    check_result: SelfCheck | None = None
    keys: int = 0
    parts: Counter = field(default_factory=Counter)  # lora_down.weight / lora_up.weight / alpha / other
    unet_modules: int = 0
    te_modules: int = 0
    ranks: Counter = field(default_factory=Counter)
    alphas: Counter = field(default_factory=Counter)
    dtypes: Counter = field(default_factory=Counter)
    metadata: dict[str, str] = field(default_factory=dict)
    shapes: Counter = field(default_factory=Counter)  # (part of the model, "linear" | "conv") -> modules
    algos: Counter = field(default_factory=Counter)  # LoRA | LoHa | LoKr -> modules, from their tensor names
    dora_modules: int = 0  # modules with a dora_scale

    @property
    def modules(self) -> int:
        return self.unet_modules + self.te_modules

    @property
    def network_kind(self) -> str | None:
        """The type the file's tensors make, as WebUIs load it: LoRA, LoCon (convs), LoHa, LoKr, +DoRA."""
        if not self.algos:
            return None
        algo = self.algos.most_common(1)[0][0]
        name = "LoCon" if algo == "LoRA" and sum(n for (_, shape), n in self.shapes.items() if shape == "conv") \
            else algo
        return f"{name}+DoRA" if self.dora_modules else name


# --- runs and their saves -----------------------------------------------------------------------------------------

def run_value(data_dir: Path, run_dir: Path) -> str:
    """The picker's value for a run: ``<output_name>/<stamp>``, relative to data_dir/runs."""
    return run_dir.resolve().relative_to((data_dir / RUNS_DIR).resolve()).as_posix()


def resolve_run(data_dir: Path, value: str | None) -> Path:
    """A picker value back to its run folder; refuses anything outside data_dir/runs (the API takes any string)."""
    if not value:
        raise UserError("pick a run first")
    return run_folder(data_dir, value)


def resolve_save(run_dir: Path, name: str | None) -> Path:
    """A save's file name back to its path inside the run folder."""
    if not name:
        raise UserError("pick a saved LoRA first")
    path = run_dir / name
    if Path(name).name != name or path.suffix != ".safetensors" or not path.is_file():
        raise UserError(f"{name}: no such LoRA file in {run_dir}")
    return path


def run_choices(supervisor: JobSupervisor) -> list[tuple[str, str]]:
    """(label, value) per run, newest first: ``name · stamp · status · n saves``."""
    choices = []
    for s in supervisor.discover():
        count = sum(1 for _ in RunLayout(s.run_dir).loras())
        label = f"{s.output_name} · {s.run_id} · {s.status} · {count} save{'' if count == 1 else 's'}"
        choices.append((label, run_value(supervisor.data_dir, s.run_dir)))
    return choices


def run_saves(run_dir: Path) -> list[SaveInfo]:
    """Every .safetensors save of a run, oldest first, with step, epoch and self-check from its checkpoint event.

    Event paths are matched by file name, so a run folder that was moved still lists its saves; a file without an
    event (copied in by hand) is listed too, without a check."""
    events = read_events(run_dir)
    done = {Path(e.path).name for e in events if isinstance(e, Done) and e.path}
    by_name = {Path(e.path).name: e for e in events if isinstance(e, Checkpoint) and e.path}
    saves = []
    for path in RunLayout(run_dir).loras():
        event = by_name.get(path.name)  # None: a file this run's events do not name (copied in, or older)
        try:
            size = path.stat().st_size
        except OSError:
            continue  # deleted meanwhile
        at = SavePoint.of(event) if event else SavePoint()
        result = SelfCheck.from_event(event) if event else None
        check = result.summary() if result else event.check if event else None
        saves.append(SaveInfo(path, at.step, at.epochs_done, size, check,
                              path.name in done or path.stem == _output_name(run_dir), result))
    return sorted(saves, key=lambda s: (s.final, s.step if s.step is not None else -1, s.path.name))


def save_of(run_dir: Path, path: Path) -> SaveInfo:
    """One save of the run by its path, as run_saves lists it (a bare record if it vanished meanwhile)."""
    found = next((s for s in run_saves(run_dir) if s.path == path), None)
    return found or SaveInfo(path, None, None, 0, None, final=False)


def _output_name(run_dir: Path) -> str:
    """The run's output_name: its folder's parent is named after it (supervisor layout)."""
    return run_dir.parent.name


def saves_table(saves: list[SaveInfo]) -> list[list[Any]]:
    return [[s.path.name, s.kind, s.step, s.epoch, human_size(s.size), s.check or "—"] for s in reversed(saves)]


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# --- the header report --------------------------------------------------------------------------------------------

def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors header (JSON) and where the tensor data starts; a UserError names a file that is not one."""
    try:
        return st_header.read_header(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path.name}: not a readable .safetensors file ({err})") from None


def _alpha_value(f: Any, start: int, info: dict[str, Any]) -> float | None:
    """A 0-dim alpha tensor's value, from its few bytes (F16/F32/F64/BF16)."""
    begin, end = info.get("data_offsets", (0, 0))
    f.seek(start + begin)
    raw = f.read(end - begin)
    dtype = info.get("dtype")
    if dtype == "BF16" and len(raw) == 2:
        return struct.unpack("<f", b"\x00\x00" + raw)[0]
    fmt = ALPHA_FORMATS.get(dtype or "")
    return struct.unpack(fmt, raw)[0] if fmt and len(raw) == struct.calcsize(fmt) else None


def lora_report(path: Path, check: str | None = None, check_result: SelfCheck | None = None) -> LoraReport:
    """Modules (per type, part and kind), ranks, alphas, dtypes and metadata of a kohya/LyCORIS LoRA file, read
    without loading its weights."""
    header, start = read_header(path)
    report = LoraReport(path, path.stat().st_size, check, check_result,
                        metadata=dict(header.pop("__metadata__", None) or {}))
    modules: dict[str, dict[str, list[int]]] = {}  # module name -> {part: shape}
    with open(path, "rb") as f:
        for key, info in header.items():
            name, _, part = key.partition(".")
            report.keys += 1
            report.parts[part if part in KNOWN_PARTS else "other"] += 1
            report.dtypes[info.get("dtype")] += 1
            modules.setdefault(name, {})[part] = list(info.get("shape") or [])
            if part == "alpha":
                alpha = _alpha_value(f, start, info)
                if alpha is not None:
                    report.alphas[round(alpha, 4)] += 1
    for name, parts in modules.items():
        _count_module(report, name, parts)
    return report


def _count_module(report: LoraReport, name: str, parts: dict[str, list[int]]) -> None:
    """One module: its type from its tensor names, its rank, whether it adapts a 3x3 conv, UNet or text encoder."""
    algo = next((a for a, marker in ALGO_MARKERS if marker in parts), None)
    if algo is None:
        return  # an alpha or scale without weights: not a module a loader applies
    part = "UNet" if name.startswith("lora_unet_") else "text encoder"
    if part == "UNet":
        report.unet_modules += 1
    else:
        report.te_modules += 1
    report.algos[algo] += 1
    report.dora_modules += "dora_scale" in parts
    report.shapes[(part, "conv" if _is_conv(name, parts) else "linear")] += 1
    rank = _rank(parts)
    if rank is not None:
        report.ranks[rank] += 1


def _is_conv(name: str, parts: dict[str, list[int]]) -> bool:
    """Whether the module adapts a convolution wider than 1x1 (the layers conv_dim ranks). A 4-D tensor says so by
    its kernel; LoHa's and LoKr's factors of a conv may all be flattened to 2-D, and then the module's kohya name
    tells (a resnet's conv1/conv2, a sampler's conv, conv_in/conv_out, in SD's diffusers or SGM naming)."""
    kernels = [shape[2:] for shape in parts.values() if len(shape) == 4]
    if kernels:
        return any(k != [1, 1] for k in kernels)
    if any(p in parts for p in ("lora_down.weight", "lokr_w2")):
        return False  # a 2-D LoRA down or full LoKr factor belongs to a Linear
    return bool(CONV_NAME_RE.search(name))


def _rank(parts: dict[str, list[int]]) -> int | None:
    """The module's rank: LoRA's down rows, LoHa's factor rank, a decomposed LoKr factor's; None for a LoKr of
    full factors (its size is set by factor, not a rank)."""
    for part, axis in RANK_AXES:
        if part in parts and len(parts[part]) > axis:
            return int(parts[part][axis])
    return None


def format_report(r: LoraReport, save: SaveInfo | None = None) -> str:
    """The report as Markdown: the self-check line first, then a table of what loaders look at."""
    m = r.metadata
    title = f"**{r.path.name}** · {human_size(r.size)}"
    if save is not None:
        title += f" · {save.kind}" + (f" ({save.at.text()})" if save.step is not None else "")
    lines = [title, "", check_line(r.check, r.check_result), ""]
    if not r.keys:
        lines += ["This file holds no tensors" + (" (a dry-run placeholder)." if m.get("loraforge_dry_run") else "."),
                  ""]
    rows = [
        ("Network", network_text(r)),
        ("Modules", f"{r.modules} (UNet {r.unet_modules}, text encoder {r.te_modules})"),
        ("Modules by kind", kinds_text(r)),
        ("Rank", _counted(r.ranks) or m.get("ss_network_dim", "—")),
        ("Alpha", _alpha_text(r) or m.get("ss_network_alpha", "—")),
        ("Base model version", m.get("ss_base_model_version", "—") + (f" (v2: {m['ss_v2']})" if "ss_v2" in m else "")),
        ("Architecture", m.get("modelspec.architecture", "—")),
        ("Resolution", m.get("modelspec.resolution") or m.get("ss_resolution", "—")),
        ("Prediction", m.get("modelspec.prediction_type", "—")),
        ("Base model", m.get("ss_sd_model_name", "—")),
        ("Trained", f"{m['ss_steps']} steps, epoch {m.get('ss_epoch', '?')}" if "ss_steps" in m else "—"),
        ("Keys", f"{r.keys} tensors: " + ", ".join(f"{n} {p}" for p, n in sorted(r.parts.items())) +
         (f" · dtype {_counted(r.dtypes)}" if r.dtypes else "")),
    ]
    lines += ["| Property | Value |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows)]
    shown = {"ss_network_module", "ss_network_args",  # the Network row shows them
             "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_v2", "modelspec.architecture",
             "modelspec.resolution", "ss_resolution", "modelspec.prediction_type", "ss_sd_model_name", "ss_steps",
             "ss_epoch"}
    other = sorted(k for k in m if k not in shown)
    if other:
        lines += ["", f"<details><summary>Other metadata ({len(other)} keys)</summary>", "", "| key | value |",
                  "|---|---|", *(f"| {k} | {_cell(_short(m[k]))} |" for k in other), "", "</details>"]
    return "\n".join(lines)


def kinds_text(r: LoraReport) -> str:
    """``UNet: 46 linear, 24 conv · text encoder: 30 linear``: the modules per part of the model and layer kind
    (conv = wider than 1x1, the layers conv_dim ranks)."""
    parts = []
    for part in ("UNet", "text encoder"):
        counts = [f"{r.shapes[(part, kind)]} {kind}" for kind in ("linear", "conv") if r.shapes[(part, kind)]]
        if counts:
            parts.append(f"{part}: {', '.join(counts)}")
    return " · ".join(parts) or "—"


def metadata_network(metadata: dict[str, str]) -> str | None:
    """The type the file's metadata (ss_network_module, ss_network_args) names, or None when it names none."""
    module = metadata.get("ss_network_module")
    if not module:
        return None
    try:
        raw = json.loads(metadata.get("ss_network_args") or "{}")
    except ValueError:
        raw = {}
    args = [f"{k}={v}" for k, v in raw.items()] if isinstance(raw, dict) else [str(a) for a in raw or []]
    dim = _metadata_number(metadata, "ss_network_dim", int) or 4
    alpha = _metadata_number(metadata, "ss_network_alpha", float) or 1.0
    try:
        return parse_network(module, args, dim, alpha).kind
    except NetworkArgsError:
        return None


def _metadata_number(metadata: dict[str, str], key: str, kind: type) -> Any:
    try:
        return kind(float(metadata.get(key, "")))
    except ValueError:
        return None


def network_text(r: LoraReport) -> str:
    """``LoCon (networks.lora, conv_dim=8 conv_alpha=4)``: the type the tensors make, with the module and args the
    metadata records; a metadata type that disagrees with the tensors is said."""
    kind = r.network_kind or "—"
    module = r.metadata.get("ss_network_module")
    args = _args_text(r.metadata.get("ss_network_args"))
    text = kind + (f" ({module}{', ' + args if args else ''})" if module else "")
    named = metadata_network(r.metadata)
    if named and r.network_kind and named != r.network_kind:
        text += f"; the metadata says {named}"
    return text


def _args_text(raw: str | None) -> str:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return str(raw or "")
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def check_line(check: str | None, result: SelfCheck | None = None) -> str:
    """The export self-check as recorded at save time, with a warning when modules did not match."""
    if result is not None:
        return _recorded_check_line(result)
    if not check:
        return "Self-check: no record (this file has no checkpoint event in the run's log)."
    m = LEGACY_CHECK_RE.search(check)
    if m and m.group(1) != m.group(2):
        return f"**Self-check: {check}** — {SKIPPED_MODULES}"
    return f"Self-check: {check}" + (" ✓" if m else "")


SKIPPED_MODULES = "WebUIs skip the modules that did not match; see the run's log."


def _recorded_check_line(result: SelfCheck) -> str:
    """From the check's numbers: which parts lost modules, and the first problems when there are any."""
    if result.dry_run:
        return f"Self-check: {result.summary()}"
    if result.missing:
        line = f"**Self-check: {result.summary()}** ({result.parts_text()}) — {SKIPPED_MODULES}"
    elif result.problems:
        line = f"**Self-check: {result.summary()}, with problems:**"
    else:
        return f"Self-check: {result.summary()} ✓"
    return "\n".join([line, *(f"- {_cell(p)}" for p in result.problems[:PROBLEMS_SHOWN])])


def _counted(counter: Counter) -> str:
    """'4' for one value, '4 (60 modules), 8 (2 modules)' for several."""
    if len(counter) == 1:
        return f"{next(iter(counter)):g}" if isinstance(next(iter(counter)), float) else str(next(iter(counter)))
    return ", ".join(f"{v:g} ({n} modules)" if isinstance(v, float) else f"{v} ({n})" for v, n in
                     counter.most_common())


def _alpha_text(r: LoraReport) -> str:
    if not r.alphas:
        return ""
    text = _counted(r.alphas)
    if len(r.alphas) == 1 and len(r.ranks) == 1:
        text += f" (scale alpha/rank = {next(iter(r.alphas)) / next(iter(r.ranks)):g})"
    return text


def _short(value: str, limit: int = 160) -> str:
    value = str(value)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} characters)"


def _cell(value: Any) -> str:
    """Markdown table cell: no pipes or newlines from metadata may break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")


# --- copy to a WebUI folder ---------------------------------------------------------------------------------------

def webui_folder(folder_text: str | None) -> Path:
    """The WebUI's Lora folder the user typed: an absolute path to a folder that exists."""
    if not folder_text or not folder_text.strip():
        raise UserError("give the WebUI's Lora folder, e.g. /path/to/stable-diffusion-webui/models/Lora")
    folder = Path(folder_text.strip()).expanduser()
    if not folder.is_absolute():
        raise UserError(f"{folder}: give the full path of the WebUI's Lora folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found; create it or fix the path (the WebUI's models/Lora)")
    return folder


def _check_target(dest: Path, src: Path, overwrite: bool) -> None:
    if dest.exists() and dest.resolve() == src.resolve():
        raise UserError(f"{dest} is the file itself")
    if dest.exists() and not overwrite:
        raise UserError(f"{dest} already exists; tick 'Overwrite' to replace it")


def copy_lora(src: Path, folder_text: str | None, overwrite: bool = False) -> Path:
    """Copy a LoRA into a WebUI's models/Lora folder: a temp file in that folder, then a rename, so the WebUI never
    lists a half-copied file. The folder must exist; an existing file is replaced only when asked."""
    dest = webui_folder(folder_text) / src.name
    _check_target(dest, src, overwrite)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def preview_name(lora: Path) -> str:
    """``<name>.preview.png``: the card image A1111, Forge and ComfyUI-Manager show beside a LoRA of that name."""
    return f"{lora.stem}{PREVIEW_SUFFIX}"


def preview_source(run_dir: Path, save: SaveInfo) -> Path | None:
    """The save's preview: the first prompt's image of the newest sample round made at or before the save's step
    (any round, for a file no checkpoint event names). None when the run made no sample by then."""
    rounds = [e for e in read_events(run_dir) if isinstance(e, Sample) and e.paths]
    if save.step is not None:
        rounds = [e for e in rounds if e.step is not None and e.step <= save.step]
    samples = RunLayout(run_dir).samples
    for event in sorted(rounds, key=lambda e: e.step or 0, reverse=True):
        first = samples / Path(event.paths[0]).name  # by name: the run folder may have moved since
        if first.is_file():
            return first
    return None


def png_bytes(src: Path) -> bytes | None:
    """The image as PNG: a PNG as is, any other format converted (the WebUIs look for ``.preview.png`` only). None
    when it cannot be read: a broken sample must not stop the LoRA's copy."""
    from PIL import Image, UnidentifiedImageError

    try:
        if src.suffix.lower() == ".png":
            return src.read_bytes()
        with Image.open(src) as image:
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError):
        return None


@dataclass
class WebuiCopy:
    """What a copy to a WebUI folder wrote: the LoRA, and its preview when the run had a sample for it."""

    lora: Path
    preview: Path | None = None
    preview_from: Path | None = None  # the sample image the preview was made from
    skipped: str = ""  # why there is no preview

    def text(self) -> str:
        if self.preview is None:
            return f"Copied to `{self.lora}` (no preview: {self.skipped})."
        source = f" (from sample `{self.preview_from.name}`)" if self.preview_from else ""
        return f"Copied to `{self.lora}`, with the preview `{self.preview.name}`{source}."


def copy_to_webui(run_dir: Path, save: SaveInfo, folder_text: str | None, overwrite: bool = False) -> WebuiCopy:
    """Copy a save and its preview image into a WebUI's Lora folder. Both targets are checked before anything is
    written, so a refusal leaves the folder as it was; each file lands atomically."""
    folder = webui_folder(folder_text)
    result = WebuiCopy(folder / save.path.name, skipped="the run made no sample image by this save")
    sample = preview_source(run_dir, save)
    image = png_bytes(sample) if sample else None
    if sample and image is None:
        result.skipped = f"the sample image {sample.name} cannot be read"
    _check_target(result.lora, save.path, overwrite)
    if image is not None:
        result.preview, result.preview_from = folder / preview_name(save.path), sample
        _check_target(result.preview, sample, overwrite)
    copy_lora(save.path, str(folder), overwrite)
    if image is not None:
        write_bytes_atomic(result.preview, image)
    return result


def load_ui_settings(data_dir: Path) -> dict[str, Any]:
    """data_dir/ui-settings.json; a missing or damaged file reads as no settings (they are conveniences)."""
    try:
        data = json.loads((data_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_ui_setting(data_dir: Path, key: str, value: Any) -> None:
    """Update one key, keeping the others (other tabs may keep settings there too)."""
    settings = load_ui_settings(data_dir) | {key: value}
    write_atomic(data_dir / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True))
