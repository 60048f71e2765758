"""The UI process stays torch-free (docs/architecture.md): importing the app must not pull the training stack."""

import subprocess
import sys
from pathlib import Path

from timing import scaled

ROOT = Path(__file__).resolve().parents[2]


def test_app_import_does_not_pull_torch():
    probe = "import sys, app.main; print(sorted({'torch', 'diffusers', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_launch_refuses_network_host_without_auth():
    out = subprocess.run([sys.executable, "launch.py", "--host", "0.0.0.0", "--no-browser"], capture_output=True,
                         text=True, cwd=ROOT, timeout=scaled(60))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--auth" in out.stderr


def test_share_needs_a_login():
    out = subprocess.run([sys.executable, "launch.py", "--share", "--no-browser"], capture_output=True, text=True,
                         cwd=ROOT, timeout=scaled(60))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--share" in out.stderr and "--auth" in out.stderr
