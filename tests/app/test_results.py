"""app/results.py on real run folders: saves from events, LoRA headers read without torch, copies, settings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from app.compare import CompareRequest, check_compare, compare_command, default_prompt, run_compare
from app.results import (
    SETTINGS_FILE,
    WEBUI_FOLDER_KEY,
    copy_lora,
    format_report,
    load_ui_settings,
    lora_report,
    resolve_run,
    resolve_save,
    run_choices,
    run_saves,
    save_ui_setting,
)
from app.runs import RunState
from app.supervisor import JobSupervisor, RunSnapshot
from app.tabs.train import progress_text
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.errors import UserError
from training.contract.events import EventWriter, read_events
from training.contract.lora_check import PartCount, SelfCheck
from training.lora_files.export import build_metadata, save_lora
from training.models.families import FAMILIES
from training.run.dry_run import write_placeholder_lora

UNET = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_{}"
TE = "lora_te_text_model_encoder_layers_0_self_attn_{}_proj"


def lora_tensors(rank: int = 4, alpha: float = 2.0, dtype=torch.float16, te: bool = True) -> dict[str, torch.Tensor]:
    """Kohya-named tensors for 4 UNet modules (+ 3 text-encoder ones), shaped like a 32-wide tiny model."""
    names = [UNET.format(p) for p in ("q", "k", "v", "out_0")] + ([TE.format(p) for p in "qkv"] if te else [])
    out = {}
    for name in names:
        out[f"{name}.lora_down.weight"] = torch.randn(rank, 32).to(dtype)
        out[f"{name}.lora_up.weight"] = torch.randn(32, rank).to(dtype)
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return out


def write_lora(path: Path, tensors: dict[str, torch.Tensor] | None = None, **config) -> Path:
    tensors = tensors if tensors is not None else lora_tensors()
    cfg = {"network_dim": 4, "network_alpha": 2.0, "resolution": "64", "output_name": "mylora", "clip_skip": 2,
           "pretrained_model_name_or_path": "/models/base.safetensors"} | config
    meta = build_metadata(cfg, FAMILIES["sd1"], {"steps": 20, "epoch": 2, "tag_frequency": {"a": {"b": 1}}},
                          state_dict=tensors)
    save_lora(path, tensors, meta)
    return path


def make_run(data_dir: Path, name: str = "mylora", stamp: str = "20240101-120000") -> Path:
    """A finished run as the trainer leaves it: job.toml, events, an epoch save, a final save, a state folder."""
    run_dir = data_dir / "runs" / name / stamp
    run_dir.mkdir(parents=True)
    save_config(TrainConfig(output_name=name, output_dir=str(run_dir), pretrained_model_name_or_path="/m.safetensors",
                            sample_prompts="red, circle --d 5;blue square"), run_dir / "job.toml")
    events = EventWriter(run_dir)
    events.emit("start", run_id=stamp, pid=1, total_steps=20, total_epochs=2)
    epoch = write_lora(run_dir / f"{name}-000001.safetensors")
    events.emit("checkpoint", step=10, epoch=1, path=str(epoch), check="7 of 7 modules matched")
    (run_dir / f"{name}-000001-state").mkdir()
    final = write_lora(run_dir / f"{name}.safetensors")
    events.emit("checkpoint", step=20, epoch=2, path=str(final), check="6 of 7 modules matched")
    events.emit("done", path=str(final), step=20)
    events.close()
    return run_dir


def test_saves_come_with_step_epoch_check_and_final_flag(tmp_path):
    run_dir = make_run(tmp_path)
    write_lora(run_dir / "handmade.safetensors")  # copied in by hand: listed, without a check
    (run_dir / ".mylora.safetensors.123.tmp").write_bytes(b"partial")  # an interrupted save is not listed

    saves = run_saves(run_dir)
    assert [s.path.name for s in saves] == ["handmade.safetensors", "mylora-000001.safetensors", "mylora.safetensors"]
    hand, epoch, final = saves
    assert (hand.check, hand.step, hand.final) == (None, None, False)
    assert (epoch.step, epoch.epoch, epoch.kind, epoch.final) == (10, 1, "epoch 1", False)
    assert epoch.check == "7 of 7 modules matched" and epoch.size == epoch.path.stat().st_size
    assert (final.step, final.kind, final.final, final.check) == (20, "final", True, "6 of 7 modules matched")


def test_saves_are_found_after_the_run_folder_moved(tmp_path):
    run_dir = make_run(tmp_path / "old")
    moved = tmp_path / "new" / "runs" / "mylora" / run_dir.name
    moved.parent.mkdir(parents=True)
    run_dir.rename(moved)
    assert [s.check for s in run_saves(moved)] == ["7 of 7 modules matched", "6 of 7 modules matched"]


def test_report_reads_rank_alpha_and_metadata_from_the_header(tmp_path):
    run_dir = make_run(tmp_path)
    epoch = run_saves(run_dir)[0]
    report = lora_report(epoch.path, epoch.check)
    assert (report.unet_modules, report.te_modules, report.modules) == (4, 3, 7)
    assert report.ranks == {4: 7} and report.alphas == {2.0: 7} and report.dtypes == {"F16": 21}
    assert report.parts == {"lora_down.weight": 7, "lora_up.weight": 7, "alpha": 7} and report.keys == 21
    assert report.metadata["ss_base_model_version"] == "sd_v1"
    assert report.metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"

    text = format_report(report, epoch)
    for expected in ("mylora-000001.safetensors", "epoch 1 (step 10, 1 epoch done)",
                     "Self-check: 7 of 7 modules matched ✓",
                     "| Modules | 7 (UNet 4, text encoder 3) |", "| Rank | 4 |",
                     "| Alpha | 2 (scale alpha/rank = 0.5) |", "| Base model version | sd_v1 (v2: False) |",
                     "| Architecture | stable-diffusion-v1/lora |", "| Resolution | 64x64 |",
                     "| Base model | base.safetensors |", "| Trained | 20 steps, epoch 2 |",
                     "21 tensors: 7 alpha, 7 lora_down.weight, 7 lora_up.weight · dtype F16", "| ss_clip_skip | 2 |"):
        assert expected in text, expected
    assert "loraforge_config" in text and "characters)" in text  # long values are shortened


def test_a_partial_self_check_is_flagged(tmp_path):
    final = run_saves(make_run(tmp_path))[-1]
    text = format_report(lora_report(final.path, final.check), final)
    assert "**Self-check: 6 of 7 modules matched**" in text and "skip" in text


def run_with_recorded_checks(data_dir: Path) -> Path:
    """A run written since checkpoint events carry check_result: a step save in the middle of epoch 2, then the end.
    The ``check`` sentences are not what the records say, so a reader that parsed them would show the wrong numbers."""
    run_dir = data_dir / "runs" / "rec" / "20240301-120000"
    run_dir.mkdir(parents=True)
    events = EventWriter(run_dir)
    events.emit("start", run_id=run_dir.name, pid=1, total_steps=20, total_epochs=2, steps_per_epoch=10)
    for step in range(1, 16):
        events.emit("step", step=step, epoch=(step - 1) // 10 + 1, loss=0.1, smoothed=0.1)
    partial = SelfCheck(7, 6, {"unet": PartCount(4, 3), "te": PartCount(3, 3)}, ["module 'x': NaN/Inf values"])
    mid = write_lora(run_dir / "rec-step00000015.safetensors")
    events.emit("checkpoint", step=15, epoch=1, path=str(mid), check="(older wording)",
                check_result=partial.to_event())
    full = SelfCheck(7, 7, {"unet": PartCount(4, 4), "te": PartCount(3, 3)})
    events.emit("checkpoint", step=20, epoch=2, path=str(write_lora(run_dir / "rec.safetensors")),
                check="(older wording)", check_result=full.to_event())
    events.close()
    return run_dir


def test_the_self_check_is_shown_from_its_recorded_numbers(tmp_path):
    mid, final = run_saves(run_with_recorded_checks(tmp_path))
    assert (mid.check, final.check) == ("6 of 7 modules matched", "7 of 7 modules matched")
    text = format_report(lora_report(mid.path, mid.check, mid.check_result), mid)
    assert "**Self-check: 6 of 7 modules matched** (UNet 3 of 4, text encoder 3 of 3)" in text and "skip" in text
    assert "- module 'x': NaN/Inf values" in text
    text = format_report(lora_report(final.path, final.check, final.check_result), final)
    assert "Self-check: 7 of 7 modules matched ✓" in text and "older wording" not in text


def test_train_and_results_tabs_give_a_save_the_same_step_and_epoch(tmp_path):
    """A save in the middle of epoch 2: the Train tab's progress says "epoch 2/2" (the epoch in progress); both tabs
    say the save was made at step 15 after 1 completed epoch, as its checkpoint event records."""
    run_dir = run_with_recorded_checks(tmp_path)
    events = read_events(run_dir)
    state = RunState()
    for event in events[:-1]:  # up to the step-15 save, as the Train tab sees the run then
        state.apply(event)
    train_tab = progress_text(RunSnapshot(run_dir, "running", [], False, state))
    mid = run_saves(run_dir)[0]
    results_tab = format_report(lora_report(mid.path, mid.check, mid.check_result), mid)
    assert train_tab.startswith("step 15/20 · epoch 2/2") and train_tab.endswith("last save: step 15, 1 epoch done")
    assert "step 15 (step 15, 1 epoch done)" in results_tab and (mid.step, mid.epoch) == (15, 1)


@pytest.mark.parametrize(("dtype", "alpha"), [(torch.float16, 1.5), (torch.bfloat16, 1.5), (torch.float32, 0.3)])
def test_alpha_is_read_from_its_bytes_in_every_dtype(tmp_path, dtype, alpha):
    path = write_lora(tmp_path / "a.safetensors", lora_tensors(rank=8, alpha=alpha, dtype=dtype))
    report = lora_report(path)
    assert report.alphas == {round(float(torch.tensor(alpha, dtype=dtype)), 4): 7} and report.ranks == {8: 7}


def test_mixed_ranks_are_counted(tmp_path):
    tensors = lora_tensors(rank=4, te=False) | {k: v for k, v in lora_tensors(rank=8).items() if "lora_te" in k}
    text = format_report(lora_report(write_lora(tmp_path / "mixed.safetensors", tensors)))
    assert "| Rank | 4 (4), 8 (3) |" in text


NOT_SAFETENSORS = [b"", b"short", b"\xff" * 8 + b"{}", (16).to_bytes(8, "little") + b"not json!!!!!!!!"]


@pytest.mark.parametrize("content", NOT_SAFETENSORS, ids=["empty", "short", "huge-length", "not-json"])
def test_a_file_that_is_not_safetensors_gives_one_line(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        lora_report(path)
    assert "broken.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_dry_run_placeholder_is_reported_as_such(tmp_path):
    path = tmp_path / "dry.safetensors"
    write_placeholder_lora(path, {"ss_output_name": "dry", "loraforge_dry_run": "true"})
    report = lora_report(path)
    assert report.keys == 0 and "dry-run placeholder" in format_report(report)


def test_resolve_run_and_save_stay_inside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    run_dir = make_run(data)
    assert resolve_run(data, "mylora/20240101-120000") == run_dir.resolve()
    assert resolve_save(run_dir, "mylora.safetensors") == run_dir / "mylora.safetensors"
    (tmp_path / "secret").mkdir()
    for bad in ("", "mylora", "../../secret", str(tmp_path / "secret"), "mylora/20240101-120000/sample"):
        with pytest.raises(UserError):
            resolve_run(data, bad)
    for bad in ("", "../mylora.safetensors", "job.toml", "missing.safetensors"):
        with pytest.raises(UserError):
            resolve_save(run_dir, bad)


def test_run_choices_label_status_and_save_count(tmp_path):
    make_run(tmp_path, stamp="20240101-120000")
    newer = make_run(tmp_path, "other", "20240202-120000")
    choices = run_choices(JobSupervisor(tmp_path))
    assert [v for _, v in choices] == ["other/20240202-120000", "mylora/20240101-120000"]
    assert choices[0][0] == "other · 20240202-120000 · done · 2 saves"
    assert default_prompt(newer) == "red, circle"


def test_copy_is_exact_refuses_overwrite_unless_asked(tmp_path):
    src = run_saves(make_run(tmp_path / "data"))[-1].path
    webui = tmp_path / "webui" / "models" / "Lora"
    webui.mkdir(parents=True)
    dest = copy_lora(src, str(webui))
    assert dest == webui / src.name and dest.read_bytes() == src.read_bytes()

    dest.write_bytes(b"older version")
    with pytest.raises(UserError, match=r"already exists.*Overwrite"):
        copy_lora(src, str(webui))
    assert dest.read_bytes() == b"older version"
    copy_lora(src, f"  {webui}  ", overwrite=True)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in webui.iterdir()) == [src.name]  # no temp file left behind


@pytest.mark.parametrize("folder", ["", "relative/Lora", "{tmp}/missing"])
def test_copy_needs_an_existing_absolute_folder(tmp_path, folder):
    src = run_saves(make_run(tmp_path / "data"))[-1].path
    with pytest.raises(UserError) as err:
        copy_lora(src, folder.format(tmp=tmp_path))
    assert "\n" not in str(err.value) and "Lora" in str(err.value)
    assert not (tmp_path / "missing").exists()


def test_ui_settings_round_trip_keeps_other_keys_and_survives_damage(tmp_path):
    assert load_ui_settings(tmp_path) == {}
    (tmp_path / SETTINGS_FILE).write_text("{not json", encoding="utf-8")
    assert load_ui_settings(tmp_path) == {}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"theme": "dark"}), encoding="utf-8")
    save_ui_setting(tmp_path, WEBUI_FOLDER_KEY, "/opt/webui/models/Lora")
    assert load_ui_settings(tmp_path) == {"theme": "dark", WEBUI_FOLDER_KEY: "/opt/webui/models/Lora"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [SETTINGS_FILE]


def request(run_dir: Path, **changes) -> CompareRequest:
    values = {"run_dir": run_dir, "lora": run_dir / "mylora.safetensors", "prompt": "red, circle", "seed": 7,
              "steps": 4, "strengths": "0,0.5,1"} | changes
    return CompareRequest(**values)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"prompt": "  "}, "prompt is empty"),
    ({"strengths": "0, half"}, "'half' is not a number"),
    ({"strengths": "0,9"}, "outside"),
    ({"steps": 0}, "steps: use 1 to 150"),
    ({"seed": -1}, "seed"),
])
def test_compare_refuses_bad_input_before_starting_anything(tmp_path, changes, expected):
    run_dir = make_run(tmp_path)
    with pytest.raises(UserError, match=expected):
        run_compare(request(run_dir, **changes), JobSupervisor(tmp_path))
    assert not (run_dir / "compare").exists()


def test_compare_command_round_trips_text_that_looks_like_options(tmp_path):
    from training.compare import parse_args, parse_strengths

    req = request(tmp_path, prompt="-sketch, --d 5 | odd", strengths="-1, 0, 1", seed=9, steps=3)
    cmd = compare_command(req, tmp_path / "grid.png")
    assert cmd[1:3] == ["-m", "training.compare"]
    args = parse_args(cmd[3:])
    assert (args.prompt, args.seed, args.steps, args.out) == ("-sketch, --d 5 | odd", 9, 3, tmp_path / "grid.png")
    assert parse_strengths(args.strengths) == [-1.0, 0.0, 1.0] and args.lora == tmp_path / "mylora.safetensors"


def test_compare_refuses_a_placeholder_and_a_run_without_job(tmp_path):
    run_dir = make_run(tmp_path)
    write_placeholder_lora(run_dir / "dry.safetensors", {"loraforge_dry_run": "true"})
    with pytest.raises(UserError, match="dry-run placeholder"):
        check_compare(request(run_dir, lora=run_dir / "dry.safetensors"), JobSupervisor(tmp_path))
    (run_dir / "job.toml").unlink()
    with pytest.raises(UserError, match=r"no job\.toml"):
        check_compare(request(run_dir), JobSupervisor(tmp_path))


def test_compare_waits_for_the_gpu_while_a_training_run_is_active(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFORGE_DRY_RUN_STEP_SECONDS", "0.5")  # the dry-run child keeps running for the test
    run_dir = make_run(tmp_path)
    supervisor = JobSupervisor(tmp_path, dry_run=True)
    handle = supervisor.start(TrainConfig(output_name="busy", max_train_steps=1000))
    try:
        with pytest.raises(UserError, match=r"training run is active \(busy/") as err:
            run_compare(request(run_dir), supervisor)
        assert "one job at a time" in str(err.value) and not (run_dir / "compare").exists()
    finally:
        supervisor.stop(handle.run_dir, grace_s=5)
        deadline = time.monotonic() + 20
        while supervisor.poll(handle.run_dir).running and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not supervisor.poll(handle.run_dir).running
    check_compare(request(run_dir), supervisor)  # free again: nothing refuses



def run_with_samples(data_dir: Path) -> Path:
    """A run whose trainer made two sample rounds (two prompts each) and saved after each: the round at step 10 as
    PNG, the one at step 20 as JPEG (a sampler that writes another format), saved at steps 10 and 20."""
    from PIL import Image

    run_dir = data_dir / "runs" / "prev" / "20240401-120000"
    (run_dir / "sample").mkdir(parents=True)
    events = EventWriter(run_dir)
    events.emit("start", run_id=run_dir.name, pid=1, total_steps=20, total_epochs=2)
    for step, suffix, colours in ((10, "png", ("red", "blue")), (20, "jpg", ("green", "white"))):
        paths = []
        for i, colour in enumerate(colours):
            path = run_dir / "sample" / f"prev_{step:06d}_{i:02d}_20240401120000_{i}.{suffix}"
            Image.new("RGB", (48, 32), colour).save(path)
            paths.append(str(path))
        events.emit("sample", step=step, paths=paths)
        lora = write_lora(run_dir / ("prev.safetensors" if step == 20 else f"prev-step{step:08d}.safetensors"))
        events.emit("checkpoint", step=step, epoch=step // 10, path=str(lora), check="7 of 7 modules matched")
    events.emit("done", path=str(run_dir / "prev.safetensors"), step=20)
    events.close()
    return run_dir


def test_copy_to_webui_brings_the_saves_preview_image(tmp_path):
    from PIL import Image

    from app.results import copy_to_webui

    run_dir = run_with_samples(tmp_path / "data")
    webui = tmp_path / "webui" / "models" / "Lora"
    webui.mkdir(parents=True)
    mid, final = run_saves(run_dir)

    copied = copy_to_webui(run_dir, mid, str(webui))
    first_sample_at_10 = run_dir / "sample" / "prev_000010_00_20240401120000_0.png"
    assert copied.preview == webui / "prev-step00000010.preview.png"
    assert copied.preview.read_bytes() == first_sample_at_10.read_bytes()
    assert (webui / mid.path.name).read_bytes() == mid.path.read_bytes()
    assert "prev-step00000010.preview.png" in copied.text() and first_sample_at_10.name in copied.text()

    copied = copy_to_webui(run_dir, final, str(webui))
    with Image.open(webui / "prev.preview.png") as image:  # the JPEG sample, converted
        assert image.format == "PNG" and image.size == (48, 32) and image.getpixel((5, 5))[1] > 100  # green
    assert sorted(p.name for p in webui.iterdir()) == sorted([
        "prev-step00000010.safetensors", "prev-step00000010.preview.png", "prev.safetensors", "prev.preview.png"])


def test_an_existing_preview_is_replaced_only_when_asked(tmp_path):
    from app.results import copy_to_webui

    run_dir = run_with_samples(tmp_path / "data")
    webui = tmp_path / "Lora"
    webui.mkdir()
    mid = run_saves(run_dir)[0]
    (webui / "prev-step00000010.preview.png").write_bytes(b"the user's own picture")
    with pytest.raises(UserError, match=r"prev-step00000010\.preview\.png already exists.*Overwrite"):
        copy_to_webui(run_dir, mid, str(webui))
    assert sorted(p.name for p in webui.iterdir()) == ["prev-step00000010.preview.png"]  # nothing copied
    copy_to_webui(run_dir, mid, str(webui), overwrite=True)
    assert (webui / "prev-step00000010.preview.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_without_samples_copies_the_lora_and_says_there_is_no_preview(tmp_path):
    from app.results import copy_to_webui

    run_dir = make_run(tmp_path / "data")
    webui = tmp_path / "Lora"
    webui.mkdir()
    copied = copy_to_webui(run_dir, run_saves(run_dir)[-1], str(webui))
    assert copied.preview is None and "no preview" in copied.text()
    assert sorted(p.name for p in webui.iterdir()) == ["mylora.safetensors"]


def test_train_and_results_tabs_agree_on_every_save_of_a_real_dry_run(tmp_path):
    """The trainer's own events (dry run: per-epoch saves, step saves inside an epoch, the final save): at each
    checkpoint the Train tab's "last save" names the same step and epochs done as the Results tab's row and report."""
    import os
    import subprocess
    import sys

    from timing import scaled

    from app.results import saves_table
    from training.contract.events import Checkpoint
    from training.run.dry_run import STEP_SECONDS_ENV

    root = Path(__file__).resolve().parents[2]
    job = tmp_path / "job.toml"
    save_config(TrainConfig(output_dir=str(tmp_path / "run"), output_name="ep", max_train_epochs=3,
                            train_batch_size=4, save_every_n_epochs=1, save_every_n_steps=7), job)
    subprocess.run([sys.executable, "-m", "training", "--config", str(job), "--dry-run"], check=True, cwd=root,
                   env=dict(os.environ, **{STEP_SECONDS_ENV: "0.001", "PYTHONPATH": str(root)}),
                   capture_output=True, timeout=scaled(60))
    run_dir, state, train_tab = tmp_path / "run", RunState(), {}
    for event in read_events(run_dir):
        state.apply(event)
        if isinstance(event, Checkpoint):
            train_tab[Path(event.path).name] = progress_text(RunSnapshot(run_dir, "running", [], False, state))
    saves = run_saves(run_dir)
    rows = {row[0]: row for row in saves_table(saves)}
    assert sorted(train_tab) == sorted(rows) == sorted(
        ["ep-000001.safetensors", "ep-step00000007.safetensors", "ep-000002.safetensors",
         "ep-step00000014.safetensors", "ep.safetensors"])
    for save in saves:
        said = save.at.text()  # "step 7, 1 epoch done"
        assert train_tab[save.path.name].endswith(f"last save: {said}")
        assert rows[save.path.name][2:4] == [save.step, save.epoch]
        assert f"({said})" in format_report(lora_report(save.path, save.check, save.check_result), save)
    # per-epoch files carry the epoch count in their name: the same number both tabs show
    assert [(s.path.name, s.kind, s.epoch) for s in saves if "step" not in s.path.name] == [
        ("ep-000001.safetensors", "epoch 1", 1), ("ep-000002.safetensors", "epoch 2", 2),
        ("ep.safetensors", "final", 3)]
    mid_epoch = "ep-step00000007.safetensors"  # inside epoch 2: one epoch done, in both tabs
    assert rows[mid_epoch][3] == 1 and "step 7, 1 epoch done" in train_tab[mid_epoch]
