"""``python -m app`` / ``python launch.py``: flags, the loopback-or-auth rule, then app.main.launch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before gradio is imported: no analytics or hub telemetry calls; unbuffered child output for trainer.log.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("PYTHONUNBUFFERED", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch.py", description="LoraForge: Stable Diffusion LoRA trainer (web UI)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login; needed when --host is not loopback")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a temporary public gradio.live link (needs the internet and --auth; "
                             "anyone with the link and the login can train on this computer)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--data-dir", type=Path, default=Path("~/LoraForge"),
                        help="folder for runs and saved configs (default ~/LoraForge)")
    parser.add_argument("--models-dir", type=Path, action="append", default=[], metavar="DIR", dest="models_dirs",
                        help="a folder of your checkpoints (.safetensors, .ckpt, diffusers folders) the Tools tab "
                             "may read and lists; repeat for more")
    parser.add_argument("--loras-dir", type=Path, action="append", default=[], metavar="DIR", dest="loras_dirs",
                        help="a folder of your LoRA files the Tools tab may read and lists; repeat for more")
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)  # tests, demos: synthetic runs
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from app.settings import Settings, is_loopback, parse_auth

    try:
        auth = parse_auth(args.auth)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and auth is None:
        print(f"error: --host {args.host} exposes the UI to the network; add --auth user:password", file=sys.stderr)
        return 2
    if args.share and auth is None:
        print("error: --share puts the UI on a public link; add --auth user:password", file=sys.stderr)
        return 2
    missing = next((d for d in (*args.models_dirs, *args.loras_dirs) if not d.expanduser().is_dir()), None)
    if missing is not None:
        print(f"error: {missing} is not a folder; give --models-dir/--loras-dir an existing folder", file=sys.stderr)
        return 2
    settings = Settings(data_dir=args.data_dir, host=args.host, port=args.port, auth=auth,
                        open_browser=not args.no_browser, share=args.share, dry_run=args.dry_run,
                        models_dirs=args.models_dirs, loras_dirs=args.loras_dirs)
    from app.main import launch

    launch(settings)  # prints the URL once the server answers, and the device line once it is known
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
