"""kohya files mean what they mean in sd-scripts: every key to fix named at once, omitted keys at sd-scripts'
defaults, values read as sd-scripts reads them, output_config, and the files sd-scripts writes train here."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from training.contract.config import TrainConfig
from training.contract.config_io import ConfigError, load_config
from training.contract.kohya_keys import BY_NAME, means_default

DATA = Path(__file__).parent / "data" / "kohya"
ROOT = Path(__file__).resolve().parents[2]

# The kohya files: two that sd-scripts' --output_config wrote and three shaped like community configs. Each loads
# whole: every option group they use (optimizer_args, reg images, dataset_config, LoCon) is supported.
KOHYA_FILES = ("sd15_output_config.toml", "sdxl_output_config.toml", "locon_community.toml",
               "reg_images_community.toml", "dataset_config_community.toml")


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refusal(path: Path, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def refused_keys(path: Path) -> set[str]:
    """The keys of a file the table refuses, at a value that asks for the feature; computed, not read from the
    loader's message."""
    flat = {}
    for key, value in tomllib.loads(path.read_text(encoding="utf-8")).items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return {k for k, v in flat.items() if k in BY_NAME and BY_NAME[k].status == "refused"
            and not means_default(BY_NAME[k], v)}


def test_every_key_to_fix_is_named_in_one_message(tmp_path):
    path = write(tmp_path, 'network_dims = 8\nweighted_captions = true\ndeepspeed = true\nlearning_rate = 1e-4\n'
                           'xformers = true\nsave_model_as = "ckpt"\n')
    assert refusal(path) == (
        "4 keys to fix: run.toml: unknown key 'network_dims' (did you mean 'network_dim'?); "
        "run.toml: 'weighted_captions' is a kohya option this trainer does not support: caption weights like "
        "(word:1.2) are not offered; captions are plain text; remove it; "
        "run.toml: 'deepspeed' is a kohya option this trainer does not support: DeepSpeed is not offered; multi-GPU "
        "runs use accelerate's data parallelism; remove it; "
        "run.toml: save_model_as = 'ckpt': LoRAs are saved as .safetensors only; remove it or set it to 'safetensors'")


def test_a_refused_key_at_sd_scripts_default_asks_for_nothing(tmp_path):
    cfg, notes = load_config(write(tmp_path, 'weighted_captions = false\nfull_fp16 = false\ndeepspeed = false\n'
                                             'metadata_thumbnail = ""\n'), kohya=False)
    assert cfg == TrainConfig()
    assert any("weighted_captions, full_fp16, deepspeed, metadata_thumbnail" in n for n in notes)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ('optimizer_type = "AdaFactor"', "optimizer_type", "Adafactor"),
    ('optimizer_type = "adamw8bit"', "optimizer_type", "AdamW8bit"),
    ('optimizer_type = ""', "optimizer_type", "AdamW"),
    ("use_8bit_adam = true", "optimizer_type", "AdamW8bit"),
    ("use_lion_optimizer = true", "optimizer_type", "Lion"),
    ("use_8bit_adam = false", "optimizer_type", "AdamW"),
    ("resume = false", "resume", None),
    ('resume = ""', "resume", None),
    ('network_weights = ""', "network_weights", None),
    ("text_encoder_lr = [5e-5]", "text_encoder_lr", 5e-5),
    ("text_encoder_lr = []", "text_encoder_lr", None),
    ('learning_rate = "1e-4"', "learning_rate", 1e-4),
    ('caption_extention = ".caption"', "caption_extension", ".caption"),
    ("validate_every_n_steps = 50", "validation_every_n_steps", 50),
])
def test_values_are_read_as_sd_scripts_reads_them(tmp_path, text, key, expected):
    cfg, _ = load_config(write(tmp_path, text), kohya=False)
    assert getattr(cfg, key) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ('use_8bit_adam = true\noptimizer_type = "Prodigy"', "'use_8bit_adam' picks optimizer_type = 'AdamW8bit'"),
    ("network_train_text_encoder_only = true", "training only the text encoders is not offered"),
    ("full_fp16 = true", "the performance issue"),
])
def test_what_sd_scripts_would_refuse_or_we_cannot_do_is_refused(tmp_path, text, fragment):
    assert fragment in refusal(write(tmp_path, text))


def test_a_kohya_file_takes_sd_scripts_defaults_for_what_it_leaves_out(tmp_path):
    path = write(tmp_path, 'pretrained_model_name_or_path = "m.safetensors"\nxformers = true\nnetwork_dim = 32\n'
                           'caption_extension = ".txt"\n')
    cfg, notes = load_config(path)
    assert (cfg.enable_bucket, cfg.network_alpha, cfg.learning_rate, cfg.lr_scheduler) == (False, 1.0, 2e-6, "constant")
    assert (cfg.mixed_precision, cfg.save_precision, cfg.sample_sampler) == ("no", "float", "ddim")
    assert (cfg.network_dim, cfg.caption_extension, cfg.cache_latents) == (32, ".txt", False)  # the file's own
    assert notes[0].startswith("read as a kohya file") and "'xformers'" in notes[0]
    taken = next(n for n in notes if "sd-scripts' defaults taken" in n)
    assert "enable_bucket = false" in taken and "learning_rate = 2e-06" in taken and "network_dim" not in taken
    assert f"seed = {cfg.seed} (sd-scripts draws a random seed" in taken
    ours, ours_notes = load_config(path, kohya=False)
    assert (ours.enable_bucket, ours.learning_rate, ours.seed) == (True, 1e-4, 42)
    assert not any("defaults taken" in n for n in ours_notes)


def test_our_own_files_are_never_read_as_kohya_files(tmp_path):
    for files in ([ROOT / "presets" / "sd15-anime.toml", ROOT / "assets" / "example-run.toml"],
                  [write(tmp_path, "schema_version = 1\nxformers = true\n")],
                  [write(tmp_path, "network_dim = 8\n", "plain.toml")]):
        _, notes = load_config(files)
        assert not any("kohya file" in n for n in notes), files
    forced, notes = load_config(write(tmp_path, "network_dim = 8\n", "plain.toml"), kohya=True)
    assert forced.enable_bucket is False and any("defaults taken" in n for n in notes)


@pytest.mark.parametrize("name", KOHYA_FILES)
def test_each_kohya_file_loads_with_nothing_refused(name):
    path = DATA / name
    assert refused_keys(path) == set()
    cfg, _ = load_config(path)
    assert cfg.pretrained_model_name_or_path


def test_the_files_hold_what_sd_scripts_wrote(tmp_path):
    cfg, _ = load_config(DATA / "sd15_output_config.toml")
    assert (cfg.text_encoder_lr, cfg.optimizer_type, cfg.network_alpha, cfg.seed) == (5e-5, "AdamW8bit", 16.0, 1234)
    locon, _ = load_config(DATA / "locon_community.toml")
    assert locon.network.kind == "LoCon" and locon.network.conv_dim == 8


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_output_config_writes_the_resolved_config_and_exits(tmp_path):
    out = tmp_path / "out"
    path = write(tmp_path, f'network_dim = 8\noutput_dir = "{out.as_posix()}"\noutput_name = "me"\n')
    done = cli("--config", str(path), "--kohya", "--output_config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = out / "me.toml"
    assert done.stdout.strip() == f"wrote {written}"
    resolved, _ = load_config(written)
    assert (resolved.network_dim, resolved.enable_bucket, resolved.learning_rate) == (8, False, 2e-6)
    assert not (out / "events.jsonl").exists()  # nothing trained
    again = cli("--config", str(path), "--set", "output_config=true", cwd=tmp_path)
    assert again.returncode == 2 and "me.toml already exists" in again.stderr.strip().splitlines()[-1]


def test_output_config_as_a_key_of_the_file(tmp_path):
    path = write(tmp_path, "network_dim = 8\noutput_config = true\nxformers = true\n")
    done = cli("--config", str(path), "--output_config", str(tmp_path / "resolved.toml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "read as a kohya file" in done.stderr
    key_only = cli("--config", str(path), "--set", f"output_dir='{(tmp_path / 'o').as_posix()}'", cwd=tmp_path)
    assert key_only.returncode == 0, key_only.stderr
    assert (tmp_path / "o" / "lora.toml").is_file()


def tiny_run_config(path: Path, model: Path, data: Path, out: Path) -> TrainConfig:
    """The file as loaded, with only what a test machine needs changed: the paths, two steps at 64 px, no samples
    or extra saves (their paths and sizes belong to the file's own machine)."""
    cfg, _ = load_config(path)
    return TrainConfig(**cfg.model_dump() | {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "vae": None, "logging_dir": None, "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128,
        "max_train_steps": 2, "max_train_epochs": None, "train_batch_size": 1, "sample_prompts": None,
        "sample_every_n_steps": None, "sample_every_n_epochs": None, "save_every_n_steps": None,
        "save_every_n_epochs": None, "validation_every_n_steps": 0})


@pytest.mark.slow
@pytest.mark.parametrize("name, model", [
    ("sd15_output_config.toml", "tiny_sd1"),
    ("sdxl_output_config.toml", "tiny_sdxl"),
])
def test_a_file_sd_scripts_wrote_trains_two_steps(tmp_path, dataset_dir, request, name, model):
    from training.contract.events import Done, read_events
    from training.run.runner import run

    cfg = tiny_run_config(DATA / name, request.getfixturevalue(model), dataset_dir, tmp_path / "run")
    if cfg.optimizer_type in ("AdamW8bit", "Lion"):
        pytest.importorskip("bitsandbytes")  # the optional 'optim' extra the file's optimizer needs
    assert run(cfg) == "done"
    events = read_events(tmp_path / "run")
    assert isinstance(events[-1], Done) and events[-1].step == 2
