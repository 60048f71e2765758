"""The table of sd-scripts' options: every key in exactly one class, each class consistent with TrainConfig."""

from __future__ import annotations

from training.contract.config import TrainConfig
from training.contract.config_io import kohya_differences
from training.contract.kohya_keys import BY_NAME, KEYS, MAPPED_TO, RANDOM_SEED, with_status

# sd-scripts' train_network.py and sdxl_train_network.py define 196 options together (the SDXL script adds
# cache_text_encoder_outputs, cache_text_encoder_outputs_to_disk and disable_mmap_load_safetensors).
SD_SCRIPTS_OPTIONS = 196


def test_the_table_holds_every_sd_scripts_option_once():
    names = [key.name for key in KEYS]
    assert len(names) == len(set(names))
    assert len([key for key in KEYS if key.sd_scripts]) == SD_SCRIPTS_OPTIONS
    for name in ("xformers", "cache_text_encoder_outputs", "disable_mmap_load_safetensors", "huber_scale",
                 "network_train_text_encoder_only", "output_config", "validate_every_n_steps"):
        assert name in BY_NAME


def test_supported_means_a_field_of_the_same_name_and_nothing_else_is_one():
    """A key is never both a TrainConfig field and ignored, mapped or refused: when an option becomes a field, its
    row must say supported (or loading would drop or refuse the user's value)."""
    for key in KEYS:
        assert (key.status == "supported") == (key.name in TrainConfig.model_fields), key.name


def test_every_key_that_is_not_supported_says_why():
    for key in KEYS:
        if key.status != "supported":
            assert len(key.reason) > 8, key.name
        assert not (key.keep and key.status != "supported"), key.name


def test_mapped_keys_name_a_field():
    assert set(MAPPED_TO) | {"output_config"} == {key.name for key in with_status("mapped")}
    for field, _ in MAPPED_TO.values():
        assert field in TrainConfig.model_fields


def test_the_performance_switches_not_built_yet_wait_for_their_issue():
    for name in ("full_fp16", "fused_backward_pass"):
        assert BY_NAME[name].status == "refused" and "performance" in BY_NAME[name].reason
    assert BY_NAME["fp8_base"].status == BY_NAME["full_bf16"].status == "supported"


def test_our_defaults_that_differ_from_sd_scripts_are_computed_from_the_table():
    """What a kohya file that leaves a key out asks for, where that is not our default."""
    assert kohya_differences() == {
        "caption_extension": ".caption", "enable_bucket": False, "cache_latents": False, "network_dim": 4,
        "network_alpha": 1.0, "learning_rate": 2e-6, "lr_scheduler": "constant", "mixed_precision": "no",
        "save_precision": "float", "seed": RANDOM_SEED, "sample_sampler": "ddim",
    }
