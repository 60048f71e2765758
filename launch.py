"""Start the LoraForge web UI: ``python launch.py [--host H] [--port P] [--auth user:pass] [--no-browser]
[--data-dir DIR] [--models-dir DIR] [--loras-dir DIR]``.

Thin on purpose: environment defaults, a Python check, then app's command line. torch and
diffusers load only in child processes (training, the demo's preparation, the device check), so the page is usable
within seconds; the device line (GPU, torch, CUDA, or CPU only) is printed and shown in the page once known.
"""

import os
import sys

# Before gradio is imported: no analytics or hub telemetry calls; unbuffered child output for trainer.log.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("PYTHONUNBUFFERED", "1")

if sys.version_info < (3, 11):  # noqa: UP036 -- the one place an older interpreter gets a sentence, not a SyntaxError
    sys.exit(f"LoraForge needs Python 3.11 or newer; this is {sys.version.split()[0]}")

from app.__main__ import main  # imported after the environment defaults above

if __name__ == "__main__":
    raise SystemExit(main())
