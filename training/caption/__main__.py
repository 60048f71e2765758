"""Caption a dataset's images: ``python -m training.caption DATASET_DIR --tagger MODEL | --captioner MODEL``.

``--tagger``: a WD14-style tagger folder (``model.onnx`` + ``selected_tags.csv``) writes booru tags (anime).
``--captioner``: a transformers model (BLIP, Florence-2, a vision-language chat model) writes sentences.
MODEL is a local folder, or a hub id (owner/name) from the Hugging Face cache or, when online, downloaded into it.

Exit status: 0 every image captioned or skipped, or stopped on request (Ctrl+C, SIGTERM, the stop file: every
caption already written is kept); 1 some images failed (named in the summary); 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import traceback
from pathlib import Path

from training.caption.compose import EXISTING_MODES, ComposeOptions, parse_tag_list
from training.caption.events import EventLog
from training.caption.images import find_images
from training.caption.job import INTERRUPTS, JobOptions, Summary, run_job
from training.contract import exit_codes
from training.contract.errors import UserError

DRY_RUN_DEFAULT = 8
_MAX_NAMES = 10
TAGGER_ONLY = ("general_threshold", "character_threshold", "include_rating", "escape_parentheses", "exclude")
CAPTIONER_ONLY = ("prompt", "max_new_tokens", "trust_remote_code")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.caption",
        description="Write a caption file beside every image of a dataset: booru tags from a WD14 tagger or "
                    "sentences from a captioner. Walks kohya's '10_name' concept folders recursively.",
        epilog="Exit status: 0 done (or stopped on request: captions written so far are kept), 1 some images "
               "failed (named in the summary), 2 bad input.")
    parser.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="folder of images or of concept folders")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tagger", metavar="MODEL", help="WD14-style tagger: a folder with model.onnx and "
                       "selected_tags.csv, or a hub id such as SmilingWolf/wd-vit-tagger-v3")
    which.add_argument("--captioner", metavar="MODEL", help="transformers captioner: a folder or hub id (BLIP, "
                       "Florence-2 such as florence-community/Florence-2-base, or a vision-language chat model)")
    tags = parser.add_argument_group("tagger options")
    tags.add_argument("--general-threshold", type=float, default=None, metavar="X",
                      help="lowest score of a general tag written (default 0.35)")
    tags.add_argument("--character-threshold", type=float, default=None, metavar="X",
                      help="lowest score of a character tag written (default 0.85)")
    tags.add_argument("--include-rating", action="store_true", default=None,
                      help="also write the most likely rating tag (general, sensitive, ...), first after the trigger")
    tags.add_argument("--escape-parentheses", action="store_true", default=None,
                      help=r"write ( and ) as \( and \), as WebUI prompts need them")
    tags.add_argument("--exclude", default=None, metavar='"TAG, TAG"',
                      help="tags never written (case, underscores and escapes do not matter)")
    cap = parser.add_argument_group("captioner options")
    cap.add_argument("--prompt", default=None, help="the instruction for models that take one (Florence-2 task "
                     "such as <DETAILED_CAPTION>, the default; a question for chat models; a caption start for BLIP)")
    cap.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                     help="longest caption in tokens (default 75)")
    cap.add_argument("--trust-remote-code", action="store_true", default=None,
                     help="allow a model that needs code from its own repository to run it (only if you trust it)")
    out = parser.add_argument_group("what is written")
    out.add_argument("--existing", choices=EXISTING_MODES, default="skip",
                     help="a caption file already there: skip (default: never touched), overwrite, append or "
                          "prepend the new caption (tags it already has are not repeated). An empty file counts "
                          "as no caption")
    out.add_argument("--trigger", default="", metavar="WORD", help="written first in every caption, never twice")
    out.add_argument("--caption-extension", default=".txt", metavar="EXT", help="caption file extension (default .txt)")
    out.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per model call (default 1)")
    out.add_argument("--dry-run", type=int, nargs="?", const=DRY_RUN_DEFAULT, default=None, metavar="N",
                     help=f"print the captions the first N images (default {DRY_RUN_DEFAULT}) would get; write "
                          "nothing")
    out.add_argument("--events", type=Path, default=None, metavar="FILE",
                     help="append progress as JSON lines to FILE (format: training/caption/events.py)")
    out.add_argument("--stop-file", type=Path, default=None, metavar="FILE",
                     help="stop before the next batch once FILE exists (a UI's Stop where signals do not reach)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Settings that cannot work, each as one line naming the option, before any model loads."""
    unused = CAPTIONER_ONLY if args.tagger else TAGGER_ONLY
    given = [name for name in unused if getattr(args, name) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise UserError(f"{option} is for {'--captioner' if args.tagger else '--tagger'} only")
    for name in ("general_threshold", "character_threshold"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
    for name, value in (("batch-size", args.batch_size), ("max-new-tokens", args.max_new_tokens),
                        ("dry-run", args.dry_run)):
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if not args.caption_extension.strip(". ") or "/" in args.caption_extension:
        raise UserError(f"--caption-extension {args.caption_extension!r}: give an extension such as .txt")


def load_model(args: argparse.Namespace):
    from training.caption.models import resolve_model

    if args.tagger:
        from training.caption.tagger import TagOptions, Wd14Tagger
        from training.caption.tags import Thresholds

        defaults = Thresholds()
        thresholds = Thresholds(
            general=defaults.general if args.general_threshold is None else args.general_threshold,
            character=defaults.character if args.character_threshold is None else args.character_threshold)
        return Wd14Tagger(resolve_model(args.tagger, "tagger"),
                          TagOptions(thresholds, bool(args.include_rating), bool(args.escape_parentheses)))
    from training.caption.captioner import CaptionOptions, load_captioner

    trust = bool(args.trust_remote_code)
    options = CaptionOptions(prompt=args.prompt, max_new_tokens=args.max_new_tokens or CaptionOptions.max_new_tokens,
                             trust_remote_code=trust)
    return load_captioner(resolve_model(args.captioner, "captioner", trust), options)


def job_options(args: argparse.Namespace) -> JobOptions:
    extension = args.caption_extension.strip()
    return JobOptions(
        root=args.dataset.expanduser(),
        caption_extension=extension if extension.startswith(".") else "." + extension,
        batch_size=args.batch_size, dry_run=args.dry_run, stop_file=args.stop_file,
        compose=ComposeOptions(existing=args.existing, trigger=args.trigger,
                               exclude=parse_tag_list(args.exclude or "")))


def report(summary: Summary, total: int, options: JobOptions) -> list[str]:
    """The summary in lines: counts, then the names of what was skipped and what failed and why."""
    if options.dry_run is not None:
        head = f"dry run: nothing written; previewed {len(summary.previews)} of {total} image(s)"
    else:
        head = (f"{len(summary.written)} written, {len(summary.skipped)} skipped, {len(summary.failed)} failed "
                f"of {total} image(s) in {summary.seconds:.1f} s")
    lines = [head]
    if summary.skipped:
        lines.append("skipped, a caption exists (--existing overwrite, append or prepend to change that): "
                     + _names([_rel(p, options.root) for p, _ in summary.skipped]))
    lines += [f"failed: {_rel(p, options.root)}: {reason}" for p, reason in summary.failed]
    if summary.stopped:
        lines.append(f"stopped after {summary.done} of {total} image(s): every caption already written is kept; "
                     "run the same command again to go on (--existing skip leaves them alone)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    events = EventLog(args.events)
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM is the UI's Stop: the same as Ctrl+C
        with contextlib.suppress(ValueError):  # signals can be set only from the main thread
            previous[sig] = signal.signal(sig, INTERRUPTS.handler)
    try:
        return _caption(args, events)
    except UserError as e:
        events.write("error", msg=str(e))
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        events.write("done", written=0, skipped=0, failed=0, stopped=True, seconds=0)
        print("stopped before any caption was written", file=sys.stderr)
        return exit_codes.DONE
    except Exception as e:
        traceback.print_exc()
        events.write("error", msg=f"{type(e).__name__}: {e}")
        print(f"error: captioning failed: {type(e).__name__}: {e}", file=sys.stderr)
        return exit_codes.FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        events.close()


def _caption(args: argparse.Namespace, events: EventLog) -> int:
    check_args(args)
    options = job_options(args)
    images = find_images(options.root)
    if not images:
        raise UserError(f"no images in {options.root} or its folders (looked for jpg, jpeg, png, webp, bmp)")
    model = load_model(args)
    total = len(images) if options.dry_run is None else min(len(images), options.dry_run)
    events.write("start", total=total, model=args.tagger or args.captioner, dry_run=options.dry_run is not None)
    summary = run_job(model, images, options, events)
    events.write("done", written=len(summary.written), skipped=len(summary.skipped), failed=len(summary.failed),
                 stopped=summary.stopped, seconds=round(summary.seconds, 3))
    for line in report(summary, total, options):
        print(line)
    return exit_codes.FAILED if summary.failed else exit_codes.DONE


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else "")


if __name__ == "__main__":
    sys.exit(main())
