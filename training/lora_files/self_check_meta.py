"""The self-check's metadata rules: header values kohya's readers parse, the family markers A1111 filters on, and
ss_network_module / ss_network_args / ss_network_dim / ss_network_alpha agreeing with the file's modules."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from training.contract.lora_check import SelfCheck
from training.lora_files.export import HASH_KEY, data_region_hash
from training.lora_files.layout_lora import DORA
from training.lora_files.layouts import Layout, Tensors

JSON_OBJECTS = ("ss_tag_frequency", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_bucket_info", "ss_network_args")
ALGO_NAMES = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}


def check_metadata_format(meta: dict[str, Any], report: SelfCheck) -> None:
    """String values, JSON where readers JSON-parse."""
    for key, value in meta.items():
        if not isinstance(value, str):
            report.problems.append(f"metadata {key!r} is not a string")
    for key in (*JSON_OBJECTS, "ss_datasets"):
        if not isinstance(meta.get(key), str):
            continue
        try:
            parsed = json.loads(meta[key])
        except ValueError:
            report.problems.append(f"metadata {key!r} is not valid JSON")
            continue
        want = list if key == "ss_datasets" else dict
        if not isinstance(parsed, want):
            report.problems.append(f"metadata {key!r} must be a JSON {want.__name__}")
    if isinstance(meta.get("ss_training_started_at"), str):
        try:
            float(meta["ss_training_started_at"])
        except ValueError:
            report.problems.append("metadata 'ss_training_started_at' is not a number")


@dataclass
class FileFacts:
    """What the file's modules say about the network, for the metadata rules."""

    ranks: list[int] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    algos: set[str] = field(default_factory=set)
    dora: bool = False
    conv3x3: bool = False

    def add(self, layout: Layout, t: Tensors) -> None:
        rank = layout.rank(t)
        if rank is not None:
            self.ranks.append(rank)
            self.alphas.append(float(t["alpha"]))
        self.algos.add(layout.algo)
        self.dora = self.dora or DORA in t
        self.conv3x3 = self.conv3x3 or any(v.ndim == 4 and tuple(v.shape[2:]) != (1, 1) for v in t.values())


def _network_args(meta: dict[str, str]) -> dict[str, str]:
    try:
        args = json.loads(meta.get("ss_network_args") or "{}")
    except ValueError:
        return {}  # reported by _check_metadata_format
    return args if isinstance(args, dict) else {}


def _check_network_module(meta: dict[str, str], facts: FileFacts, report: SelfCheck) -> None:
    """ss_network_module and ss_network_args name the type the tensors are: kohya's networks.lora holds plain
    LoRA/LoCon; LyCORIS's lycoris.kohya states its algo (and dora_wd) in the args."""
    module, args = meta.get("ss_network_module"), _network_args(meta)
    if any(not isinstance(v, str) for v in args.values()):
        report.problems.append("metadata 'ss_network_args' values must be strings, as kohya writes them")
    lycoris = bool(facts.algos - {"lora"}) or facts.dora
    if module == "networks.lora" and not lycoris:
        if facts.conv3x3 and not (args.get("conv_dim") or args.get("conv_block_dims")):
            report.problems.append("metadata 'ss_network_args' lacks conv_dim, but the file has 3x3 conv modules")
        return
    if module != "lycoris.kohya":
        want = "lycoris.kohya" if lycoris else "networks.lora"
        report.problems.append(f"metadata 'ss_network_module' is {module!r}, expected {want!r}")
        return
    algo = ALGO_NAMES.get(str(args.get("algo", "")).lower())
    if algo is None or {algo} != facts.algos:
        report.problems.append(f"metadata 'ss_network_module' is 'lycoris.kohya' with algo={args.get('algo')!r}, "
                               f"but the file's modules are {', '.join(sorted(facts.algos)) or 'none'}")
    if (str(args.get("dora_wd", "False")).lower() == "true") != facts.dora:
        report.problems.append(f"metadata 'ss_network_args' dora_wd={args.get('dora_wd', 'False')}, but the file "
                               f"{'has' if facts.dora else 'has no'} dora_scale")


def check_metadata_family(meta: dict[str, str], family: Any, facts: FileFacts, raw: bytes,
                           report: SelfCheck) -> None:
    """Family markers A1111 filters on, network facts, sshs hash, modelspec architecture."""
    expect = {"ss_v2": str(bool(family.v2)), "ss_base_model_version": family.base_model_version}
    for key, value in expect.items():
        if meta.get(key) != value:
            report.problems.append(f"metadata {key!r} is {meta.get(key)!r}, expected {value!r}")
    _check_network_module(meta, facts, report)
    per_block = _network_args(meta)
    for key, values, block_key in (("ss_network_dim", facts.ranks, "block_dims"),
                                   ("ss_network_alpha", facts.alphas, "block_alphas")):
        common = Counter(values).most_common(1)[0][0] if values else None
        if meta.get(key) == "Dynamic" and len(set(values)) > 1:
            continue  # kohya's resize writes "Dynamic" when the modules' ranks differ
        if block_key in per_block:
            continue  # networks.lora writes network_dim/alpha, which per-block values need not contain
        try:
            ok = common is None or math.isclose(float(meta.get(key, "nan")), common, rel_tol=1e-3)
        except ValueError:
            ok = False
        if not ok:
            report.problems.append(f"metadata {key!r} is {meta.get(key)!r}, most common in the file is {common:g}")
    if HASH_KEY in meta and meta[HASH_KEY] != data_region_hash(raw):
        report.problems.append(f"metadata {HASH_KEY!r} does not match the file's data region")
    arch = meta.get("modelspec.architecture")
    if arch is not None and arch != f"{family.modelspec_architecture}/lora":
        report.problems.append(f"metadata 'modelspec.architecture' is {arch!r}, expected "
                               f"'{family.modelspec_architecture}/lora'")
