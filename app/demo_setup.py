"""*Try the demo*, the part without Gradio: prepare the demo folder in a child process and read its config back.

``python -m training.demo --prepare DIR`` builds the tiny random-weight model (torch) and copies the bundled sample
dataset; it runs as a child so the UI process stays torch-free. It is fast when DIR is complete.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from app.form import config_to_values
from app.settings import Settings
from training.contract.config_io import load_config
from training.contract.errors import UserError
from training.contract.layout import JOB_FILE
from training.contract.services import DEMO_CONFIG, DEMO_LABEL

__all__ = ["DEMO_LABEL", "demo_values", "is_demo_run", "prepare"]
PREPARE_TIMEOUT_S = 600.0


def prepare_command(demo_dir: Path) -> list[str]:
    return [sys.executable, "-m", "training.demo", "--prepare", str(demo_dir)]


def prepare(settings: Settings, timeout: float = PREPARE_TIMEOUT_S) -> Path:
    """Run the prepare step; returns demo.toml. Raises UserError with one line (the child's last stderr line)."""
    from app.supervisor import child_env

    demo_dir = settings.demo_dir
    try:
        out = subprocess.run(prepare_command(demo_dir), capture_output=True, text=True, timeout=timeout,
                             env=child_env(), stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"preparing the demo in {demo_dir} took over {timeout:g} s") from None
    except OSError as err:
        raise UserError(f"could not start the demo preparation: {err}") from None
    if out.returncode != 0:
        last = next((ln for ln in reversed(out.stderr.splitlines()) if ln.strip()), f"exit status {out.returncode}")
        raise UserError(last.removeprefix("error: "))
    config = demo_dir / DEMO_CONFIG
    if not config.is_file():
        raise UserError(f"the demo preparation ended without writing {config}")
    return config


def demo_values(config: Path) -> dict[str, Any]:
    """Form values for every field from demo.toml. output_dir is left empty: the UI gives each run a fresh folder.
    Raises ConfigError (a UserError) for a broken file."""
    cfg, _notes = load_config(config)
    return config_to_values(cfg) | {"output_dir": ""}


def is_demo_run(run_dir: Path, settings: Settings) -> bool:
    """Whether a run trains the demo's tiny model (its job.toml points into the demo folder)."""
    import tomllib

    try:
        job = tomllib.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    model = str((job.get("model") or {}).get("pretrained_model_name_or_path") or "")
    try:
        return bool(model) and Path(model).resolve().is_relative_to(settings.demo_dir.resolve())
    except OSError:
        return False
