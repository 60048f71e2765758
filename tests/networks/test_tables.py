"""The module tables the size estimate reads equal the real models diffusers and transformers build from the
bundled configs (on the meta device), so the estimate selects from the same modules the trainer does."""

from __future__ import annotations

import json

import pytest

from training.models.families import FAMILIES
from training.networks.tables import family_table, render
from training.networks.targets import TABLE_FILE, infos_from_table, read_module_table


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_s_table_is_its_real_models(family):
    folder = FAMILIES[family].config_dir
    stored = json.loads((folder / TABLE_FILE).read_text(encoding="utf-8"))
    built = family_table(folder)
    assert stored == built, (f"{folder / TABLE_FILE} is stale: rewrite it with "
                             f"python -c 'from training.networks.tables import write_tables; write_tables()'")
    assert json.loads(render(built)) == built
    parts = read_module_table(folder)
    assert set(parts) == {p for p in ("unet", "text_encoder", "text_encoder_2") if (folder / p).is_dir()}
    assert all(infos_from_table(stored[p]) == parts[p] for p in parts)
