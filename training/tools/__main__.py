"""Command line: LoRA tools, one program with subcommands.

    python -m training.tools merge --model CKPT --lora A.safetensors[:STRENGTH] [--lora B...] --out OUT.safetensors
    python -m training.tools merge-loras --lora A[:S] --lora B[:S] --out C.safetensors [--rank N]
    python -m training.tools resize --lora A.safetensors (--rank N | --dynamic sv_ratio=R|sv_fro=F|sv_cumulative=C)
                                    --out B.safetensors
    python -m training.tools extract --base CKPT_A --tuned CKPT_B --rank N [--conv-rank N] [--clamp-quantile 0.99]
                                     --out L.safetensors
    python -m training.tools inspect A.safetensors

Every subcommand also takes ``--events FILE``: JSON lines for a UI watching the job (start, progress per module or
tensor, each printed line, done with the output, or the one-line error), the format of
training/contract/tool_events.py.

Exit status (training.contract.exit_codes): 0 done, 2 bad input (one line naming the file and what to do), 1 a
full disk or another failure. Nothing is written under the output name unless it is complete, and an existing
output is replaced only with --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.contract import exit_codes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a rank; give 1 or more")
    return value


def dynamic_spec(text: str) -> tuple[str, float]:
    from training.tools.svd import DYNAMIC_METHODS

    method, sep, value = text.partition("=")
    if not sep or method not in DYNAMIC_METHODS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(m + '=X' for m in DYNAMIC_METHODS)}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    low_ok = number > 1 if method == "sv_ratio" else 0 < number <= 1
    if not low_ok:
        raise argparse.ArgumentTypeError(f"{text!r}: sv_ratio takes a ratio above 1 (e.g. 8); sv_fro and "
                                         "sv_cumulative a share in (0, 1] (e.g. 0.9)")
    return method, number


def quantile(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a quantile; give a number in (0, 1], e.g. 0.99")
    return value


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake as one line (``error: ...``) and exit status 2, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(exit_codes.BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m training.tools", description="LoRA tools: merge, resize, "
                                     "extract, inspect. Exit status 0 done, 2 bad input, 1 a full disk or failure.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    events = OneLineParser(add_help=False)
    events.add_argument("--events", type=Path, metavar="FILE", help="also write JSON-line events here (progress, "
                        "the printed lines, the output or the error), for a UI")
    merge = sub.add_parser("merge", help="add LoRAs into a checkpoint", parents=[events])
    merge.add_argument("--model", type=Path, required=True,
                       help="SD1.x/2.x/XL checkpoint (.safetensors or .ckpt) or diffusers folder")
    merge.add_argument("--lora", action="append", required=True, metavar="FILE[:STRENGTH]",
                       help="a LoRA and its strength (default 1); repeat for more")
    merge.add_argument("--unet-strength", type=float, default=1.0, help="multiplies every UNet module's strength")
    merge.add_argument("--te-strength", type=float, default=1.0, help="multiplies every text-encoder strength")
    merge.add_argument("--precision", choices=("fp16", "bf16", "fp32"), help="cast every float tensor (default: "
                       "keep each tensor's dtype)")
    merge.add_argument("--out", type=Path, required=True, help="the merged checkpoint (.safetensors; a folder for a "
                       "diffusers --model)")
    merge.add_argument("--force", action="store_true", help="replace --out if it exists")

    merge_loras = sub.add_parser("merge-loras", help="combine LoRAs into one LoRA", parents=[events])
    merge_loras.add_argument("--lora", action="append", required=True, metavar="FILE[:STRENGTH]")
    merge_loras.add_argument("--rank", type=positive_int, help="re-factorise each module's summed delta to this "
                             "rank by SVD (default: exact, the ranks add up)")
    merge_loras.add_argument("--out", type=Path, required=True)
    merge_loras.add_argument("--force", action="store_true")

    resize = sub.add_parser("resize", help="cut a LoRA's rank by SVD", parents=[events])
    resize.add_argument("--lora", type=Path, required=True)
    resize.add_argument("--rank", type=positive_int, help="the new rank (with --dynamic: the largest allowed)")
    resize.add_argument("--conv-rank", type=positive_int, help="the new rank of 3x3 conv modules (default --rank)")
    resize.add_argument("--dynamic", type=dynamic_spec, metavar="sv_ratio=R|sv_fro=F|sv_cumulative=C",
                        help="choose each module's rank by kohya's rule")
    resize.add_argument("--out", type=Path, required=True)
    resize.add_argument("--force", action="store_true")

    extract = sub.add_parser("extract", help="the LoRA of a fine-tuned checkpoint against its base", parents=[events])
    extract.add_argument("--base", type=Path, required=True)
    extract.add_argument("--tuned", type=Path, required=True)
    extract.add_argument("--rank", type=positive_int, required=True)
    extract.add_argument("--conv-rank", type=positive_int, help="also extract the UNet's 3x3 convs (LoCon)")
    extract.add_argument("--clamp-quantile", type=quantile, default=0.99,
                         help="kohya's clamp of the factors to this quantile of their values (1: no clamp)")
    extract.add_argument("--min-diff", type=float, default=0.01, help="text encoders whose weights differ by at "
                         "most this are left out (kohya's rule)")
    extract.add_argument("--out", type=Path, required=True)
    extract.add_argument("--force", action="store_true")

    inspect = sub.add_parser("inspect", help="what a LoRA file holds", parents=[events])
    inspect.add_argument("lora", type=Path)
    return parser


def run(args: argparse.Namespace, log=print, progress=None) -> None:
    """Run the subcommand; ``log`` gets each report line, ``progress(done, total, what)`` the loop's count."""
    from training.tools.lorafile import parse_strength

    if args.command == "merge":
        from training.tools.merge import merge

        merge(args.model, [parse_strength(s) for s in args.lora], args.out, args.unet_strength, args.te_strength,
              args.precision, args.force, log=log, progress=progress)
    elif args.command == "merge-loras":
        from training.tools.merge_loras import merge_loras

        merge_loras([parse_strength(s) for s in args.lora], args.out, args.rank, args.force, log=log,
                    progress=progress)
    elif args.command == "resize":
        from training.tools.resize import resize

        if args.rank is None and args.dynamic is None:
            raise_usage("resize needs --rank N or --dynamic METHOD=VALUE")
        resize(args.lora, args.out, args.rank, args.dynamic, args.conv_rank, args.force, log=log, progress=progress)
    elif args.command == "extract":
        from training.tools.extract import extract

        extract(args.base, args.tuned, args.out, args.rank, args.conv_rank, args.clamp_quantile, args.min_diff,
                args.force, log=log, progress=progress)
    else:
        from training.tools.inspect import inspect

        inspect(args.lora, log=log, progress=progress)


def raise_usage(message: str) -> None:
    from training.contract.errors import UserError

    raise UserError(message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training.contract.errors import UserError
    from training.contract.tool_events import ToolEventWriter

    events = ToolEventWriter(args.events)

    def log(text: str = "") -> None:
        print(text, flush=True)
        events.line(text)

    events.start(args.command)
    try:
        run(args, log, events.progress)
        events.done(getattr(args, "out", None))
    except UserError as err:
        return failed(events, str(err), err.exit_status)
    except KeyboardInterrupt:
        return failed(events, "interrupted; nothing was written under the output name", exit_codes.ABORTED)
    finally:
        events.close()
    return exit_codes.DONE


def failed(events, message: str, status: int) -> int:
    """The one line on stderr and as the last event."""
    print(f"error: {message}", file=sys.stderr)
    events.error(message)
    return status


if __name__ == "__main__":
    sys.exit(main())
