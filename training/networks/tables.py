"""The module tables beside the bundled configs (``assets/models/<family>/modules.json``): every Linear and Conv2d
of the family's UNet and text encoders with the classes around it, read from the models diffusers and transformers
build from those configs on the meta device (no weights, no memory).

The size estimate (``training.plan.estimates``) reads the tables without torch and runs the same ``select_targets``
the engine runs on the loaded model. ``tests/networks/test_tables.py`` rebuilds each table and compares; after a
config or a library upgrade changes one, rewrite them with ``write_tables()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.networks.build import module_infos
from training.networks.targets import TABLE_FILE, ModuleInfo

PARTS = ("unet", "text_encoder", "text_encoder_2")


def build_on_meta(folder: Path, part: str) -> Any:
    """The diffusers UNet or transformers CLIP text encoder of a config folder, its tensors on the meta device."""
    import torch

    with torch.device("meta"):
        if part == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder)))
        import transformers

        config = transformers.CLIPTextConfig.from_pretrained(str(folder))
        architecture = (config.architectures or ["CLIPTextModel"])[0]
        return getattr(transformers, architecture)(config)


def table_of(infos: list[ModuleInfo]) -> dict[str, Any]:
    """A model's ModuleInfos as JSON: the class of every enclosing module path once, then one row per module."""
    classes: dict[str, str] = {}
    rows = []
    for info in infos:
        parts = info.path.split(".")
        for depth, name in enumerate(info.blocks):
            classes.setdefault(".".join(parts[:depth]), name)
        rows.append([info.path, info.kind, info.in_features, info.out_features, info.kernel])
    return {"classes": classes, "modules": rows}


def family_table(config_dir: Path) -> dict[str, Any]:
    """Every model part of a bundled config folder that exists, as a table."""
    return {part: table_of(module_infos(build_on_meta(config_dir / part, part)))
            for part in PARTS if (config_dir / part).is_dir()}


def render(table: dict[str, Any]) -> str:
    """One line per module and class, so a changed table shows as a readable diff."""
    lines = ["{"]
    for i, (part, content) in enumerate(table.items()):
        lines.append(f'"{part}": {{"classes": {{')
        entries = list(content["classes"].items())
        lines += [f"{json.dumps(k)}: {json.dumps(v)}" + ("," if j < len(entries) - 1 else "")
                  for j, (k, v) in enumerate(entries)]
        lines.append('}, "modules": [')
        rows = content["modules"]
        lines += [json.dumps(row) + ("," if j < len(rows) - 1 else "") for j, row in enumerate(rows)]
        lines.append("]}" + ("," if i < len(table) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_tables() -> list[Path]:
    """Rewrite every family's table from its config folder."""
    from training.contract.atomic import write_atomic
    from training.models.families import FAMILIES

    written = []
    for family in FAMILIES.values():
        path = family.config_dir / TABLE_FILE
        if path in written:
            continue
        write_atomic(path, render(family_table(family.config_dir)))
        written.append(path)
    return written
