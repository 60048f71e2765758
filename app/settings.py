"""Settings of one UI process: where its data lives and how it listens. Built by launch.py from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.runs import RUNS_DIR

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Gradio's own copies of uploads and of the files it serves; Gradio reads the folder from GRADIO_TEMP_DIR.
GRADIO_DIR = Path("cache") / "gradio"


@dataclass
class Settings:
    """data_dir holds runs/ and saved configs; it is also the only extra folder Gradio may serve files from."""

    data_dir: Path = Path("~/LoraForge")
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    open_browser: bool = True
    share: bool = False  # a public gradio.live link: only with auth (launch refuses it otherwise)
    dry_run: bool = False  # runs use the trainer's --dry-run (tests, demos): no model, no dataset
    # The user's own checkpoint and LoRA folders (--models-dir, --loras-dir): the Tools tab may read files there
    # besides the data dir, and lists what they hold.
    models_dirs: list[Path] = field(default_factory=list)
    loras_dirs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.models_dirs = [Path(d).expanduser().resolve() for d in self.models_dirs]
        self.loras_dirs = [Path(d).expanduser().resolve() for d in self.loras_dirs]
        (self.data_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)

    @property
    def configs_dir(self) -> Path:
        return self.data_dir / "configs"

    @property
    def gradio_dir(self) -> Path:
        """Where Gradio keeps uploads and copies of served files (inside the data dir, not the system temp folder)."""
        return self.data_dir / GRADIO_DIR

    @property
    def demo_dir(self) -> Path:
        """Where *Try the demo* keeps its tiny model, sample dataset and demo.toml (inside the data dir, so its
        files may be served)."""
        return self.data_dir / "demo"


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'user:pass' -> (user, pass); the password may itself contain ':'. Raises ValueError with one line."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes user:password, both non-empty")
    return user, password
