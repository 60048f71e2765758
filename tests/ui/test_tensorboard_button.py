"""The Results tab's TensorBoard button: in a real browser it links to a TensorBoard on the picked run's logs, which
answers over HTTP; the child is reused, and it ends when the app process ends."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from timing import ms, scaled
from ui_helpers import NOISE_FILTERS, launched, open_app, serve, stop_all, wait_for

from app.tensorboard import TensorBoards, answers
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.errors import UserError
from training.contract.events import EventWriter

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]

RUN, BARE = "logged/20240101-120000", "bare/20240101-120000"


def run_folder(data_dir: Path, value: str, logged: bool) -> Path:
    """A finished run folder; ``logged``: with the TensorBoard scalars the trainer writes (through accelerate)."""
    run_dir = data_dir / "runs" / value
    run_dir.mkdir(parents=True)
    save_config(TrainConfig(output_dir=str(run_dir), output_name=run_dir.parent.name), run_dir / "job.toml")
    events = EventWriter(run_dir)
    events.emit("start", run_id=run_dir.name, pid=1, total_steps=3, total_epochs=1)
    events.emit("done", path=str(run_dir / "x.safetensors"), step=3)
    events.close()
    if logged:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir / "logs" / "lora")) as writer:
            for step, loss in enumerate((0.3, 0.2, 0.15), 1):
                writer.add_scalar("loss", loss, step)
    return run_dir


def get_json(url: str):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=scaled(10)) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def board_app(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tb-data")
    run_folder(data_dir, RUN, logged=True)
    run_folder(data_dir, BARE, logged=False)
    ui, demo = serve(data_dir, dry_run=True)
    try:
        yield ui
    finally:
        stop_all(ui.supervisor)
        demo.close()


def pick_run(page, value: str) -> None:
    page.locator("#results-run input").click()
    page.get_by_role("option", name=re.compile(value.split("/")[0])).first.click()


@pytest.mark.e2e
def test_the_button_links_to_a_tensorboard_of_the_runs_logs(page, board_app):
    from playwright.sync_api import expect

    open_app(page, board_app.url)
    page.get_by_role("tab", name="Results").click()
    pick_run(page, RUN)
    page.locator("#tensorboard-btn").click()
    link = page.locator("#tensorboard-message a")
    expect(link).to_be_visible(timeout=ms(150))
    url = link.get_attribute("href")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
    assert "lora" in get_json(url + "data/runs")  # TensorBoard itself answers, serving this run's logs

    page.locator("#tensorboard-btn").click()  # reused, not a second process
    expect(page.locator("#tensorboard-message")).to_contain_text(url)

    pick_run(page, BARE)
    page.locator("#tensorboard-btn").click()
    expect(page.locator("#tensorboard-message")).to_contain_text("No TensorBoard: this run wrote no TensorBoard logs")
    expect(page.locator("#tensorboard-message")).to_contain_text("logging_dir")


def test_a_run_without_logs_gets_one_line_and_no_process(tmp_path):
    boards = TensorBoards()
    with pytest.raises(UserError, match="wrote no TensorBoard logs") as err:
        boards.open(run_folder(tmp_path, BARE, logged=False))
    assert "\n" not in str(err.value)
    assert not boards._boards


@pytest.mark.slow
def test_tensorboard_ends_with_the_app(tmp_path):
    """launch.py as a user starts it; Ctrl+C ends the app, and its TensorBoard stops answering."""
    from gradio_client import Client

    data_dir = tmp_path / "data"
    run_folder(data_dir, RUN, logged=True)
    with launched(data_dir, ready_timeout=120) as app:
        message = Client(app.url, verbose=False).predict(RUN, api_name="/open_tensorboard")
        url = re.search(r"\((http://127\.0\.0\.1:\d+/)\)", message)
        assert url, message
        assert answers(url[1])
    wait_for(lambda: not answers(url[1]), timeout=30)
