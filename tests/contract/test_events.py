"""The event stream is the UI's only view into a run: partial lines, NaN values and control flags must work."""

from __future__ import annotations

import json

from training.contract.control import Control
from training.contract.events import EventReader, EventWriter, read_events


def test_reader_keeps_a_partial_last_line_for_the_next_poll(tmp_path):
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.poll() == []  # no file yet
    path.write_text('{"v":1,"event":"start"}\n{"v":1,"event":"st', encoding="utf-8")
    assert [e["event"] for e in reader.poll()] == ["start"]
    with open(path, "a", encoding="utf-8") as f:
        f.write('ep","step":1}\nnot json\n')
    events = reader.poll()
    assert [e["event"] for e in events] == ["step"] and events[0]["step"] == 1
    assert reader.malformed == 1


def test_writer_lines_are_valid_json_even_with_nan(tmp_path):
    writer = EventWriter(tmp_path)
    writer.emit("step", step=1, loss=float("nan"), lr={"unet": 1e-4})
    writer.close()
    line = (tmp_path / "events.jsonl").read_text(encoding="utf-8").strip()
    record = json.loads(line)
    assert record["v"] == 1 and record["event"] == "step" and record["loss"] == "nan"
    assert read_events(tmp_path)[0]["lr"] == {"unet": 1e-4}


def test_control_flags(tmp_path):
    control = Control(tmp_path)
    assert not control.take("save")
    control.request("save")
    assert control.take("save") and not control.take("save")  # acted on once
    control.request("stop")
    assert control.take("stop") and control.is_set("stop")    # stop stays until the run ends
    control.clear()
    assert not control.is_set("stop")


def test_contract_modules_do_not_import_torch():
    """The UI process imports the config and event contract; it must stay free of torch/diffusers (seconds, GBs)."""
    import subprocess
    import sys

    probe = ("import sys, training.contract.config, training.contract.config_io, training.contract.events, "
             "training.plan.preflight; "
             "print(sorted({'torch', 'diffusers', 'peft', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
