"""app.tools_job with real ``python -m training.tools`` children on tiny real LoRA files: the job's progress and
printed report come through the events file, the output lands under <data>/tools with the rank asked for, inspect
prints the block table, bad input is one line, Stop leaves nothing under the output name, one job at a time, none
while training holds the GPU, and no path outside the data folder and the user's folders is read."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timing import scaled
from tool_files import random_lora, save_lora_file

from app.tools_job import ToolFolders, ToolJobs, ToolRequest, lora_choices, model_choices
from training.contract.errors import UserError
from training.contract.tool_events import ToolDone, ToolEventReader, ToolLine, ToolProgress, ToolStart


@pytest.fixture
def folders(tmp_path) -> ToolFolders:
    (tmp_path / "data").mkdir()
    (tmp_path / "loras").mkdir()
    return ToolFolders(tmp_path / "data", loras=(tmp_path / "loras",))


@pytest.fixture
def rank4(tiny_ckpt, folders) -> Path:
    tiny = tiny_ckpt("sd1")
    tensors = random_lora(tiny.modules(), rank=4, alpha=4.0, seed=3)
    return save_lora_file(folders.loras[0] / "style.safetensors", tensors, "sd1")


def finished(jobs: ToolJobs, timeout: float = 180):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        status = jobs.poll()
        if not status.running:
            return status
        time.sleep(0.1)
    raise AssertionError("the tool job did not end")


def test_resize_job_counts_modules_prints_the_report_and_writes_rank_2_under_tools(folders, rank4):
    jobs = ToolJobs(folders, lambda: False)
    assert (f"loras/{rank4.name}", str(rank4)) in lora_choices(folders)
    jobs.start(ToolRequest("resize", loras=((str(rank4), 1.0),), rank=2, output_name="small"))
    with pytest.raises(UserError, match="a tool job is running"):
        jobs.start(ToolRequest("inspect", loras=((str(rank4), 1.0),)))
    status = finished(jobs)
    out = folders.tools_dir / "small" / "small.safetensors"
    assert not status.error, status.line
    assert status.output == str(out) and status.line == f"Done: wrote {out}"
    modules = {k.split(".")[0] for k in load_file(str(rank4))}
    resized = load_file(str(out))
    assert {k.split(".")[0] for k in resized} == modules
    assert {resized[f"{m}.lora_down.weight"].shape[0] for m in modules} == {2}
    assert (status.done, status.total, status.what) == (len(modules), len(modules), "modules")
    assert any(line.startswith("overall: ") for line in status.lines)
    assert sum(line.startswith("lora_") and "Frobenius norm kept" in line for line in status.lines) == len(modules)
    events = ToolEventReader(out.parent / "events.jsonl").read_new()
    assert events[0] == ToolStart("resize") and events[-1] == ToolDone(str(out))
    assert [e.done for e in events if isinstance(e, ToolProgress)] == list(range(1, len(modules) + 1))
    assert [e.text for e in events if isinstance(e, ToolLine)] == status.lines
    # The output is offered as a LoRA now, and not as a checkpoint.
    assert str(out) in {v for _, v in lora_choices(folders)}
    assert str(out) not in {v for _, v in model_choices(folders)}


def test_a_second_run_of_the_same_name_is_one_line_unless_overwrite(folders, rank4):
    jobs = ToolJobs(folders, lambda: False)
    out = folders.tools_dir / "same" / "same.safetensors"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"an earlier output")
    jobs.start(ToolRequest("resize", loras=((str(rank4), 1.0),), rank=2, output_name="same"))
    status = finished(jobs)
    assert status.error and "already exists" in status.line and "Traceback" not in status.line
    assert "\n" not in status.line and out.read_bytes() == b"an earlier output"
    jobs.start(ToolRequest("resize", loras=((str(rank4), 1.0),), rank=3, output_name="same", overwrite=True))
    status = finished(jobs)
    assert not status.error, status.line
    replaced = load_file(str(out))
    assert {v.shape[0] for k, v in replaced.items() if k.endswith("lora_down.weight")} == {3}


def test_inspect_job_prints_the_block_table(folders, rank4):
    jobs = ToolJobs(folders, lambda: False)
    jobs.start(ToolRequest("inspect", loras=((str(rank4), 1.0),)))
    status = finished(jobs)
    assert not status.error and status.output == "" and status.line == "Done: inspect"
    table = status.lines[status.lines.index(next(x for x in status.lines if x.startswith("delta norm per block"))):]
    assert any(line.strip().startswith("unet ") and "#" in line for line in table)
    assert any(line.strip().startswith("lora_te layer 0") for line in table)
    assert not any(p.suffix == ".safetensors" for p in folders.tools_dir.rglob("*"))


def test_paths_outside_the_folders_and_bad_names_are_refused_before_any_process(folders, rank4, tmp_path):
    jobs = ToolJobs(folders, lambda: False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stray = elsewhere / "stray.safetensors"
    stray.write_bytes(rank4.read_bytes())
    for typed in (str(stray), f"{folders.loras[0]}/../elsewhere/stray.safetensors", "../elsewhere/stray.safetensors"):
        with pytest.raises(UserError) as refused:
            jobs.start(ToolRequest("resize", loras=((typed, 1.0),), rank=2))
        line = str(refused.value)
        assert "outside the folders the Tools tab may read" in line and str(folders.data_dir) in line
        assert f"{folders.loras[0]} (--loras-dir)" in line and "\n" not in line
    with pytest.raises(UserError, match="no folders"):
        jobs.start(ToolRequest("resize", loras=((str(rank4), 1.0),), rank=2, output_name="../../escape"))
    with pytest.raises(UserError, match="not a rank"):
        jobs.start(ToolRequest("resize", loras=((str(rank4), 1.0),), rank=0))
    assert jobs.poll().job_id == "" and not folders.tools_dir.exists()


def test_no_job_while_training_holds_the_gpu(folders, rank4):
    jobs = ToolJobs(folders, lambda: True)
    with pytest.raises(UserError, match="a training run is going or queued"):
        jobs.start(ToolRequest("resize", loras=((str(rank4), 1.0),), rank=2))
    assert jobs.poll().job_id == ""


def many_modules_lora(path: Path, count: int) -> Path:
    """A LoRA of ``count`` 192x192 modules at rank 24: resizing it takes seconds, time to press Stop."""
    modules = {f"lora_unet_block_{i}_proj": torch.nn.Linear(192, 192, bias=False) for i in range(count)}
    tensors = random_lora(modules, rank=24, alpha=24.0, seed=5)
    return save_lora_file(path, tensors)


def test_stop_ends_the_job_and_leaves_nothing_under_the_output_name(folders):
    lora = many_modules_lora(folders.loras[0] / "big.safetensors", 6000)
    jobs = ToolJobs(folders, lambda: False)
    jobs.start(ToolRequest("resize", loras=((str(lora), 1.0),), rank=4, output_name="cut"))
    deadline = time.monotonic() + scaled(120)
    while jobs.poll().done < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.poll().running, "the job ended before Stop: make the LoRA bigger"
    assert jobs.stop().startswith("Stopping")
    status = finished(jobs)
    assert status.stopped and not status.error and status.output == ""
    assert status.line == "Stopped: resize wrote nothing under the output name."
    assert sorted(p.name for p in (folders.tools_dir / "cut").iterdir()) == ["events.jsonl", "tool.log"]


def test_launch_options_name_the_users_folders_and_refuse_a_missing_one(tmp_path, capsys):
    from app.__main__ import main, parse_args
    from app.settings import Settings

    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    args = parse_args(["--models-dir", str(tmp_path / "m1"), "--models-dir", str(tmp_path / "m2"),
                       "--loras-dir", str(tmp_path / "m1")])
    assert args.models_dirs == [tmp_path / "m1", tmp_path / "m2"] and args.loras_dirs == [tmp_path / "m1"]
    settings = Settings(data_dir=tmp_path / "data", models_dirs=args.models_dirs, loras_dirs=args.loras_dirs)
    assert ToolFolders.of(settings) == ToolFolders((tmp_path / "data").resolve(),
                                                   ((tmp_path / "m1").resolve(), (tmp_path / "m2").resolve()),
                                                   ((tmp_path / "m1").resolve(),))
    assert main(["--data-dir", str(tmp_path / "data"), "--loras-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nowhere'} is not a folder; give --models-dir/--loras-dir an existing folder"


def test_model_list_offers_checkpoints_and_diffusers_folders_not_loras(tiny_ckpt, folders, rank4, tmp_path):
    models = tmp_path / "models"
    (models / "pipe").mkdir(parents=True)
    (models / "pipe" / "model_index.json").write_text("{}", encoding="utf-8")
    (models / "pipe" / "unet").mkdir()
    (models / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(tiny_ckpt("sd1").path.read_bytes())
    (models / "sd1.safetensors").write_bytes(tiny_ckpt("sd1").path.read_bytes())
    (models / "old.ckpt").write_bytes(b"pickle")
    (models / "style.safetensors").write_bytes(rank4.read_bytes())
    mine = ToolFolders(folders.data_dir, models=(models,), loras=folders.loras)
    listed = sorted(label for label, _ in model_choices(mine))
    assert listed == ["models/old.ckpt", "models/pipe", "models/sd1.safetensors"]
    assert [label for label, _ in lora_choices(mine)] == ["loras/style.safetensors"]


def test_merge_into_a_checkpoint_then_extract_it_back_from_the_merged_output(tiny_ckpt, folders, rank4, tmp_path):
    """The other two operations through the job: merge counts tensors and writes a checkpoint (listed as a model
    from then on), and extract reads that output back from <data>/tools against its base."""
    models = tmp_path / "models"
    models.mkdir()
    base = models / "sd1.safetensors"
    base.write_bytes(tiny_ckpt("sd1").path.read_bytes())
    mine = ToolFolders(folders.data_dir, models=(models,), loras=folders.loras)
    jobs = ToolJobs(mine, lambda: False)
    jobs.start(ToolRequest("merge", loras=((str(rank4), 0.5),), model=str(base), precision="fp32",
                           output_name="merged"))
    status = finished(jobs)
    merged = mine.tools_dir / "merged" / "merged.safetensors"
    assert not status.error, status.line
    assert status.output == str(merged) and status.what == "tensors" and status.done == status.total > 0
    assert {t.dtype for t in load_file(str(merged)).values()} == {torch.float32}
    assert str(merged) in {v for _, v in model_choices(mine)}
    jobs.start(ToolRequest("extract", base=str(base), tuned=str(merged), rank=4, output_name="back"))
    status = finished(jobs)
    assert not status.error, status.line
    extracted = load_file(str(mine.tools_dir / "back" / "back.safetensors"))
    assert {v.shape[0] for k, v in extracted.items() if k.endswith("lora_down.weight")} <= {4}
    assert status.what == "modules" and status.done == status.total > 0
