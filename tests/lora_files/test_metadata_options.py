"""training_comment, metadata_* and no_metadata as a written file states them (read back with safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from training.contract.config import TrainConfig
from training.lora_files.export import build_metadata, save_lora
from training.models.families import FAMILIES

TENSORS = {"lora_unet_a.lora_down.weight": torch.ones(2, 8), "lora_unet_a.lora_up.weight": torch.ones(4, 2),
           "lora_unet_a.alpha": torch.tensor(1.0)}
RUN_FACTS = {"tag_frequency": {"1_red": {"red": 2}}, "dataset_dirs": {"1_red": {"n_repeats": 1, "img_count": 2}},
             "steps": 4, "session_id": 11, "training_finished_at": 1.7e9}


def written_metadata(tmp_path: Path, **options) -> dict[str, str]:
    """The header of a LoRA saved the way a run saves it: the config's dump, the run's facts, the file's tensors."""
    cfg = TrainConfig(output_name="mylora", **options)
    metadata = build_metadata(cfg.model_dump(mode="json"), FAMILIES["sd1"], RUN_FACTS, state_dict=TENSORS)
    path = tmp_path / "mylora.safetensors"
    save_lora(path, TENSORS, metadata)
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def test_metadata_options_are_the_files_modelspec_and_comment(tmp_path):
    meta = written_metadata(tmp_path, training_comment="trigger: rdcrcl", metadata_title="Red circles",
                            metadata_author="Ann", metadata_description="Draws red circles.",
                            metadata_license="CC-BY-4.0", metadata_tags="circle, red",
                            optimizer_args=["weight_decay=0.1"], scale_weight_norms=1.5)
    assert meta["ss_training_comment"] == "trigger: rdcrcl"
    assert meta["modelspec.title"] == "Red circles"
    assert (meta["modelspec.author"], meta["modelspec.description"]) == ("Ann", "Draws red circles.")
    assert (meta["modelspec.license"], meta["modelspec.tags"]) == ("CC-BY-4.0", "circle, red")
    assert meta["ss_optimizer"] == "AdamW(weight_decay=0.1)"  # kohya's form: the name, then its arguments
    assert meta["ss_scale_weight_norms"] == "1.5"
    assert "ss_tag_frequency" in meta and "loraforge_config" in meta


def test_without_metadata_options_the_title_is_the_output_name_and_no_author_is_claimed(tmp_path):
    meta = written_metadata(tmp_path)
    assert meta["modelspec.title"] == "mylora" and meta["ss_training_comment"] == "None"
    assert not {"modelspec.author", "modelspec.license", "modelspec.tags", "modelspec.description"} & set(meta)


def test_no_metadata_keeps_only_what_kohya_keeps(tmp_path):
    """kohya's minimum: the family markers and network facts, plus the modelspec block and the hash; nothing about
    the dataset (tag counts, folders) or the training settings."""
    meta = written_metadata(tmp_path, no_metadata=True, metadata_author="Ann", training_comment="secret")
    plain = {k for k in meta if not k.startswith("modelspec.")}
    assert plain == {"ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                     "sshs_model_hash"}
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("2", "1.0")  # the file's own rank and alpha
    assert meta["modelspec.author"] == "Ann" and meta["modelspec.title"] == "mylora"
