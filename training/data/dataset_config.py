"""kohya's dataset config: a TOML of ``[general]``, ``[[datasets]]`` and ``[[datasets.subsets]]`` read into a scan.

Each subset is one folder of images (``image_dir``, the images directly in it) with its own repeats, class token,
caption extension, regularisation flag and caption/augmentation options (``SubsetOptions``). A value is looked up in
the subset, then its dataset, then ``[general]``, then the run's config, as sd-scripts does. Dataset-level values
(resolution, batch size, buckets) replace the run's: ``dataset_settings`` gives the run's config with them, so the
buckets, the sampler and the step plan need not know where they came from. Several ``[[datasets]]`` train as one
when they agree on those values; ones that differ are refused in one line (each would need its own resolution and
batch size). Torch-free: the dataset check uses it too.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.data.folder import Concept, DatasetScan, _names, _scan_concept, scan_dataset
from training.data.subset import SubsetOptions

# [[datasets]] (and [general]) keys that set a run-wide value: kohya's name -> the config field.
DATASET_KEYS = {"resolution": "resolution", "batch_size": "train_batch_size", "enable_bucket": "enable_bucket",
                "min_bucket_reso": "min_bucket_reso", "max_bucket_reso": "max_bucket_reso",
                "bucket_reso_steps": "bucket_reso_steps", "validation_split": "validation_split"}
# Subset keys that say where the images are and what they are, with their types.
SUBSET_KEYS: dict[str, type | tuple[type, ...]] = {"image_dir": str, "num_repeats": int, "class_tokens": str,
                                                   "caption_extension": str, "is_reg": bool}
ONLY_IN_SUBSET = ("image_dir", "is_reg")  # kohya refuses these above a subset
# kohya dataset keys accepted and ignored, with why.
IGNORED_KEYS = {"bucket_no_upscale": "buckets never upscale images",
                "cache_info": "image sizes are read when the folder is scanned"}
# Every other key sd-scripts' dataset config knows: refused with "not supported yet" unless a SubsetOptions field
# of that name exists (the caption and augmentation options become supported there, by name).
KOHYA_KEYS = ("color_aug", "random_crop", "face_crop_aug_range", "keep_tokens_separator", "secondary_separator",
              "caption_separator", "enable_wildcard", "token_warmup_min", "token_warmup_step", "caption_prefix",
              "caption_suffix", "custom_attributes", "resize_interpolation", "caption_dropout_every_n_epochs",
              "caption_tag_dropout_rate", "alpha_mask", "metadata_file", "conditioning_data_dir",
              "network_multiplier", "validation_seed", "shuffle_caption", "keep_tokens", "flip_aug",
              "caption_dropout_rate")


def option_keys() -> tuple[str, ...]:
    """The per-subset caption and augmentation options: every field of SubsetOptions, under its kohya name."""
    return tuple(f.name for f in dataclasses.fields(SubsetOptions))


class Where:
    """Names a table of the file in messages: ``dataset.toml: [[datasets]] 1, [[datasets.subsets]] 2``."""

    def __init__(self, file: Path, table: str) -> None:
        self.file, self.table = file, table

    def error(self, text: str) -> UserError:
        return UserError(f"dataset_config {self.file}: {self.table}: {text}")


def read_file(path: Path) -> dict[str, Any]:
    """The file as a dict (TOML, or JSON as sd-scripts also reads), with its top level checked."""
    if not path.is_file():
        raise UserError(f"dataset_config: file {path} not found; give a kohya dataset .toml, or leave it empty")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"dataset_config {path}: not a valid {path.suffix.lstrip('.').upper() or 'TOML'} file "
                        f"({str(err).splitlines()[0]})") from None
    for key in data:
        if key not in ("general", "datasets"):
            raise Where(path, "top level").error(f"unknown key '{key}'{_hint(key, ('general', 'datasets'))}: a "
                                                 "dataset config holds [general] and [[datasets]] only")
    if not isinstance(data.get("general", {}), dict):
        raise Where(path, "top level").error("'general' must be a table: [general]")
    datasets = data.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) for d in datasets):
        raise Where(path, "top level").error("no [[datasets]] table with [[datasets.subsets]] in it")
    return data


def _hint(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(table: Mapping[str, Any], where: Where, allowed: set[str], notes: list[str]) -> None:
    """Refuse a key the table may not hold (unknown, or kohya's but not supported here); note ignored ones."""
    for key in table:
        if key in allowed:
            continue
        if key in IGNORED_KEYS:
            notes.append(f"dataset_config {where.file}: {where.table}: '{key}' ignored: {IGNORED_KEYS[key]}")
        elif key in KOHYA_KEYS or key in DATASET_KEYS or key in SUBSET_KEYS:
            wrong_place = key in DATASET_KEYS or key in ONLY_IN_SUBSET or key == "subsets"
            raise where.error(f"'{key}' does not belong in this table" if wrong_place else
                              f"'{key}' is a kohya dataset option this trainer does not support yet; remove it")
        else:
            raise where.error(f"unknown key '{key}'{_hint(key, allowed)}")


def _allowed(level: str) -> set[str]:
    subset = set(SUBSET_KEYS) | set(option_keys())
    if level == "subset":
        return subset
    shared = (subset - set(ONLY_IN_SUBSET)) | set(DATASET_KEYS)
    return shared | {"subsets"} if level == "dataset" else shared


def _lookup(key: str, tables: list[Mapping[str, Any]], default: Any) -> Any:
    """The first table's value that is set (kohya treats a missing key and none alike), else ``default``."""
    for table in tables:
        if table.get(key) is not None:
            return table[key]
    return default


def _validated(cfg: TrainConfig, values: dict[str, Any], where: Where) -> TrainConfig:
    """The run's config with ``values`` (config field names) set, checked by the config's own rules."""
    try:
        return TrainConfig.model_validate({**cfg.model_dump(), **values})
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        kohya = {v: k for k, v in DATASET_KEYS.items()}.get(field, field)
        raise where.error(f"{kohya} = {values.get(field)!r}: {first['msg'].removeprefix('Value error, ')}") from None


def _dataset_values(data: dict[str, Any], index: int) -> dict[str, Any]:
    tables = [data["datasets"][index], data.get("general", {})]
    return {field: value for key, field in DATASET_KEYS.items()
            if (value := _lookup(key, tables, None)) is not None}


def dataset_settings(cfg: TrainConfig) -> TrainConfig:
    """The run's config with the dataset config's resolution, batch size and bucket values, when it has one;
    several [[datasets]] that disagree on them are refused."""
    if not cfg.dataset_config:
        return cfg
    path = Path(cfg.dataset_config).expanduser()
    data = read_file(path)
    first = _dataset_values(data, 0)
    for i in range(1, len(data["datasets"])):
        other = _dataset_values(data, i)
        for field in set(first) | set(other):
            mine, theirs = first.get(field, getattr(cfg, field)), other.get(field, getattr(cfg, field))
            if str(mine) != str(theirs):
                key = {v: k for k, v in DATASET_KEYS.items()}[field]
                raise Where(path, f"[[datasets]] {i + 1}").error(
                    f"{key} = {theirs!r} differs from [[datasets]] 1's {mine!r}: this trainer trains all datasets "
                    "of a run at one resolution, batch size and bucket setting; give them the same values or train "
                    "them in separate runs")
    return _validated(cfg, first, Where(path, "[[datasets]] 1"))


def scan_dataset_config(cfg: TrainConfig) -> DatasetScan:
    """Every subset's images, each carrying its subset's options, repeats and regularisation flag. ``cfg`` is the
    run's config (``dataset_settings`` is applied here too). Raises ``UserError`` (one line) for a bad file."""
    path = Path(cfg.dataset_config or "").expanduser()
    cfg = dataset_settings(cfg)
    data = read_file(path)
    scan = DatasetScan(items=[], concepts=[], config_file=path)
    ignored = [key for key in ("train_data_dir", "reg_data_dir") if getattr(cfg, key).strip()]
    if ignored:  # sd-scripts ignores them too, and says so
        scan.warnings.append(f"{' and '.join(ignored)} ignored: dataset_config {path} names the image folders")
    general = data.get("general", {})
    _check_keys(general, Where(path, "[general]"), _allowed("general"), scan.warnings)
    for d, dataset in enumerate(data["datasets"]):
        where = Where(path, f"[[datasets]] {d + 1}")
        _check_keys(dataset, where, _allowed("dataset"), scan.warnings)
        subsets = dataset.get("subsets")
        if not isinstance(subsets, list) or not subsets or not all(isinstance(s, dict) for s in subsets):
            raise where.error("no [[datasets.subsets]] table with an image_dir in it")
        for s, subset in enumerate(subsets):
            sub_where = Where(path, f"[[datasets]] {d + 1}, [[datasets.subsets]] {s + 1}")
            _check_keys(subset, sub_where, _allowed("subset"), scan.warnings)
            _scan_subset(scan, cfg, [subset, dataset, general], d, sub_where)
    if scan.skipped:
        listed = _names([f"{p.name} ({reason})" for p, reason in scan.skipped])
        scan.warnings.append(f"skipped {len(scan.skipped)} unreadable image(s): {listed}")
    if not scan.items:
        raise UserError(f"dataset_config {path}: no training images: every subset is empty or is_reg = true")
    return scan


def _typed(key: str, value: Any, where: Where) -> Any:
    kind = SUBSET_KEYS[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise where.error(f"{key} = {value!r}: must be {'true or false' if kind is bool else kind.__name__}")
    return value


def _scan_subset(scan: DatasetScan, cfg: TrainConfig, tables: list[Mapping[str, Any]], dataset: int,
                 where: Where) -> None:
    image_dir = tables[0].get("image_dir")
    if image_dir is None:
        raise where.error("image_dir is missing: each subset names the folder of its images")
    folder = _folder(str(_typed("image_dir", image_dir, where)), where)
    repeats = _typed("num_repeats", _lookup("num_repeats", tables, 1), where)
    class_tokens = _lookup("class_tokens", tables, None)
    ext = str(_typed("caption_extension", _lookup("caption_extension", tables, cfg.caption_extension), where))
    is_reg = _typed("is_reg", tables[0].get("is_reg", False), where)
    if repeats < 1:
        scan.warnings.append(f"dataset_config: ignored subset {folder}: num_repeats {repeats} is below 1")
        return
    options = _subset_options(cfg, tables, where)
    before = len(scan.reg_items if is_reg else scan.items)
    name = "" if class_tokens is None else str(_typed("class_tokens", class_tokens, where))
    _scan_concept(scan, folder, name, repeats, ext if ext.startswith(".") else "." + ext, is_reg=is_reg,
                  dataset=dataset, options=options)
    if len(scan.reg_items if is_reg else scan.items) == before:
        scan.warnings.append(f"dataset_config: ignored subset {folder}: no readable images in it")


def _folder(text: str, where: Where) -> Path:
    """``image_dir`` as given (sd-scripts reads it from the working folder), else beside the dataset config."""
    given = Path(text).expanduser()
    for folder in (given, where.file.parent / given):
        if folder.is_dir():
            return folder
    raise where.error(f"image_dir {text}: folder not found")


def _subset_options(cfg: TrainConfig, tables: list[Mapping[str, Any]], where: Where) -> SubsetOptions:
    values = {key: value for key in option_keys() if (value := _lookup(key, tables, None)) is not None}
    checked = _validated(cfg, values, where) if values else cfg
    return SubsetOptions.from_config(checked)


# --- what the LoRA file says about its dataset (kohya's ss_* keys)


def dataset_facts(cfg: TrainConfig, scan: DatasetScan, bucket_info: Any = None) -> dict[str, Any]:
    """ss_num_train_images, ss_num_reg_images, ss_tag_frequency, ss_dataset_dirs and, as sd-scripts writes them,
    ss_reg_dataset_dirs for a folder run or ss_datasets (each dataset with its subsets) for a dataset config run."""
    facts: dict[str, Any] = {"num_train_images": scan.num_train_images, "num_reg_images": scan.num_reg_images,
                             "tag_frequency": scan.tag_frequency(), "dataset_dirs": scan.dataset_dirs()}
    if scan.config_file is None:
        facts["reg_dataset_dirs"] = scan.reg_dataset_dirs()
    else:
        facts["datasets"] = datasets_metadata(cfg, scan, bucket_info)
    return facts


def datasets_metadata(cfg: TrainConfig, scan: DatasetScan, bucket_info: Any = None) -> list[dict[str, Any]]:
    """kohya's ss_datasets: per [[datasets]] its batch size, counts, resolution, buckets and subsets."""
    concepts = scan.concepts + scan.reg_concepts
    out = []
    for d in sorted({c.dataset for c in concepts}):
        mine = sorted((c for c in concepts if c.dataset == d), key=concepts.index)
        out.append({
            "is_dreambooth": True, "batch_size_per_device": cfg.train_batch_size,
            "num_train_images": sum(c.image_count * c.repeats for c in mine if not c.is_reg),
            "num_reg_images": sum(c.image_count * c.repeats for c in mine if c.is_reg),
            "resolution": list(cfg.resolution_wh), "enable_bucket": cfg.enable_bucket,
            "min_bucket_reso": cfg.min_bucket_reso, "max_bucket_reso": cfg.max_bucket_reso,
            "tag_frequency": _tags_of(scan, d), "bucket_info": bucket_info,
            "subsets": [_subset_metadata(c, _options_of(scan, c)) for c in mine]})
    return out


def _tags_of(scan: DatasetScan, dataset: int) -> dict[str, dict[str, int]]:
    """One [[datasets]]' tag frequency (its training and regularisation folders)."""
    mine = [it for it in scan.items + scan.reg_items if it.dataset == dataset]
    return DatasetScan(items=mine, concepts=[]).tag_frequency()


def _options_of(scan: DatasetScan, concept: Concept) -> SubsetOptions | None:
    items = scan.reg_items if concept.is_reg else scan.items
    return next((it.options for it in items if it.path.parent == concept.path and it.dataset == concept.dataset), None)


def _subset_metadata(concept: Concept, subset_options: SubsetOptions | None) -> dict[str, Any]:
    options = dataclasses.asdict(subset_options) if subset_options is not None else {}
    kohya_flags = {key: options.get(key, False) for key in ("color_aug", "flip_aug", "random_crop",
                                                            "shuffle_caption", "enable_wildcard")}
    texts = {key: options.get(key) for key in ("keep_tokens_separator", "secondary_separator", "caption_prefix",
                                               "caption_suffix")}
    return {"img_count": concept.image_count, "num_repeats": concept.repeats, **kohya_flags,
            "keep_tokens": options.get("keep_tokens", 0), **texts, "image_dir": concept.path.name,
            "class_tokens": concept.name or None, "is_reg": concept.is_reg}


def scan_run_dataset(cfg: TrainConfig) -> DatasetScan:
    """The run's images: the dataset config's subsets when one is set (train_data_dir and reg_data_dir are then
    ignored, as sd-scripts ignores them), else train_data_dir's folders and reg_data_dir's."""
    if cfg.dataset_config:
        return scan_dataset_config(cfg)
    reg = cfg.reg_data_dir.strip()
    return scan_dataset(Path(cfg.train_data_dir), cfg.caption_extension, Path(reg) if reg else None)
