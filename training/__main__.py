"""Command line: ``python -m training --config run.toml``.

Exit status (training.contract.exit_codes): 0 done or stopped on request; 1 training failed (reason in events.jsonl
and on stderr; a full disk too); 2 bad input (unknown key, invalid value, missing file or folder, an output_dir that
cannot be written, is in use or holds an earlier run), reported in one line; 130 aborted by a second Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training.contract import exit_codes

if TYPE_CHECKING:
    from training.contract.config import TrainConfig
    from training.contract.events import Checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Train a Stable Diffusion LoRA.",
        epilog="Every option and its limits: docs/options.md. Exit status: 0 done or stopped on request, 1 training "
               "failed (a full disk too), 2 bad input or an output_dir that cannot be used (in use by another run, "
               "holding an earlier run, not writable), 130 aborted by a second Ctrl+C.")
    parser.add_argument("--config", type=Path, action="append", default=[],
                        help="TOML file with the training options (kohya key names), required except with "
                             "--env-report; repeat to layer files, e.g. --config presets/sd15-anime.toml "
                             "--config my-run.toml (later files win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one option, e.g. --set max_train_steps=200 (TOML value syntax; a value that "
                             "is not TOML is taken as text, e.g. a path); repeatable, wins over the files")
    parser.add_argument("--kohya", action=argparse.BooleanOptionalAction, default=None,
                        help="read the files as kohya (sd-scripts) files: every key they leave out takes sd-scripts' "
                             "default, not ours (docs/options.md, 'kohya files'); --no-kohya never does; without "
                             "either, a file with no schema_version and no [preset] table that holds sd-scripts keys "
                             "this trainer has no setting for is read as a kohya file")
    parser.add_argument("--output_config", "--output-config", nargs="?", const=True, default=None, metavar="FILE",
                        help="write the resolved config (every value, defaults taken included) to FILE, default "
                             "<output_dir>/<output_name>.toml, and exit without training, as sd-scripts' "
                             "--output_config does; an existing file is never overwritten. The key output_config = "
                             "true in a file does the same")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, then replay a synthetic run into output_dir without loading torch "
                             "or a model and without checking the model or dataset paths (for UI tests; pace: "
                             "LORAFORGE_DRY_RUN_STEP_SECONDS, default 0.02 s/step)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an output_dir that holds an earlier run: its events.jsonl and the "
                             "LoRA files and -state folders named after output_name are deleted first (without "
                             "this, such a folder is refused unless resume points into it)")
    parser.add_argument("--env-report", action="store_true",
                        help="print the Python and torch versions and the GPUs torch sees (name, memory, bf16), "
                             "then exit")
    parser.add_argument("--json", action="store_true", help="with --env-report: one JSON object (for the UI)")
    return parser.parse_args(argv)


def parse_overrides(pairs: list[str]) -> dict:
    import tomllib

    from training.contract.config_io import ConfigError

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value  # a bare string such as a path
    return overrides


def env_info() -> dict:
    """What this machine trains on: Python, torch, CUDA and each GPU (name, memory, bf16), or why not.
    Machine-readable for the UI's device line (``--env-report --json``); env_report() words it for people."""
    import platform

    info: dict = {"python": platform.python_version(), "system": platform.system(), "torch": None, "cuda": None,
                  "gpus": [], "mps": False, "error": None}
    try:
        import torch
    except (ImportError, OSError) as err:  # OSError: a torch whose native libraries do not load
        info["error"] = f"torch is not installed or does not load ({err})"
        return info
    info["torch"] = torch.__version__
    try:
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                info["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                                     "bf16": bool(torch.cuda.is_bf16_supported()) if i == 0 else None})
        mps = getattr(torch.backends, "mps", None)
        info["mps"] = bool(mps and mps.is_available())
    except Exception as err:  # a broken driver: report it instead of a traceback
        info["error"] = f"the GPU check failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return info


def env_report(info: dict | None = None) -> str:
    info = info or env_info()
    lines = [f"python {info['python']} ({info['system']})"]
    if info["torch"] is None:
        lines.append("torch is not installed: install the torch build for your GPU first (see README.md)")
        return "\n".join(lines)
    lines.append(f"torch {info['torch']}")
    if info["error"]:
        lines.append(info["error"])
    for gpu in info["gpus"]:
        bf16 = "" if gpu["bf16"] is None else f", bf16 {'yes' if gpu['bf16'] else 'no'}"
        lines.append(f"cuda {info['cuda']}: {gpu['name']}, {gpu['memory_gib']:.1f} GiB{bf16}")
    if not info["gpus"] and info["mps"]:
        lines.append("no CUDA GPU; an Apple GPU (MPS) is available")
    elif not info["gpus"]:
        lines.append("no CUDA GPU: training runs on the CPU (slow; fine for a pipeline check)")
    return "\n".join(lines)


def quiet_libraries() -> None:
    """Library chatter (loading bars, fp32-cast notices, optional-kernel probes) would bury our own messages."""
    import logging

    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):  # import-time notices
        os.environ.setdefault(var, "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.env_report:
        print(json.dumps(env_info()) if args.json else env_report())
        return exit_codes.DONE
    if not args.config:
        print("error: --config run.toml is required (see README.md or python -m training --help)", file=sys.stderr)
        return exit_codes.BAD_INPUT

    from training.contract.config_io import load_config, wants_output_config
    from training.contract.errors import UserError
    from training.contract.presets import preset_family
    from training.plan.preflight import check_preset_family, preflight

    try:
        overrides = parse_overrides(args.set)
        cfg, notes = load_config(args.config, overrides, kohya=args.kohya)
        if args.output_config or wants_output_config(args.config, overrides):
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            print(f"wrote {output_config(cfg, args.output_config)}")
            return exit_codes.DONE
        scan = None
        if not args.dry_run:  # a dry run needs neither the model nor the dataset
            scan = preflight(cfg)
            check_preset_family(cfg.pretrained_model_name_or_path, preset_family(args.config))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        from training.run.dry_run import main as dry_run_main

        return dry_run_main(cfg, overwrite=args.overwrite)

    quiet_libraries()
    from training.run.frame import report_crash
    from training.run.runner import TrainingFailed, run

    # Errors during the run were already shown on the console as they went into events.jsonl.
    try:
        run(cfg, scan=scan, overwrite=args.overwrite)
    except UserError as err:
        if not err.reported:
            print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    except TrainingFailed:
        return exit_codes.FAILED
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return exit_codes.ABORTED
    except Exception as err:
        report_crash(err)
        return exit_codes.FAILED
    if os.environ.get("RANK", "0") == "0":  # once, not once per GPU
        print(summary(Path(cfg.output_dir)))
    return exit_codes.DONE


def output_config(cfg: TrainConfig, target: str | bool | None) -> Path:
    """Write the resolved config where --output_config FILE says, else beside the run's LoRA files as
    <output_name>.toml; like sd-scripts, never over an existing file."""
    from training.contract.config_io import ConfigError, save_config

    if isinstance(target, str):
        path = Path(target)
    elif cfg.output_dir:
        path = Path(cfg.output_dir) / f"{cfg.output_name}.toml"
    else:
        raise ConfigError("output_config: set output_dir, or name the file: --output_config FILE")
    if path.exists():
        raise ConfigError(f"output_config: {path} already exists; remove it or name another file "
                          "(--output_config FILE)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_config(cfg, path)
    except OSError as err:
        raise ConfigError(f"output_config: cannot write {path}: {err.strerror or err}") from None
    return path


def summary(run_dir: Path) -> str:
    """One or two lines on how the run ended, from its event stream."""
    from training.contract.events import Checkpoint, Stopped, read_events

    events = read_events(run_dir)
    last = events[-1]
    check = next((check_summary(e) for e in reversed(events) if isinstance(e, Checkpoint)), "")
    if isinstance(last, Stopped):
        return (f"stopped at step {last.step}: {last.last_checkpoint} ({check})\n"
                f"resume with: --set resume='{last.state}'")
    return f"done: {last.path} ({check})"


def check_summary(checkpoint: Checkpoint) -> str:
    """The self-check sentence of a checkpoint event: from its record, else the text older runs wrote."""
    from training.contract.lora_check import SelfCheck

    record = SelfCheck.from_event(checkpoint)
    return record.summary() if record else checkpoint.check or ""


if __name__ == "__main__":
    sys.exit(main())
