"""kohya's sample-prompt syntax, shared by the UI (validating the field) and the trainer (rendering samples).

Prompt file: one prompt a line, ``#`` comments, options after the prompt: ``--n`` negative prompt, ``--w``/``--h``
size, ``--d`` seed, ``--l`` CFG scale, ``--s`` steps. A config value without a file is read as prompts split by ';'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from training.contract.errors import UserError

OPTION = re.compile(r"\s--([nwhdls])\s+")
PROMPT_FILE_SUFFIXES = (".txt", ".prompt", ".prompts")


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int = 1234
    cfg_scale: float = 7.0
    steps: int = 28


OPTION_ORDER = "nwhsld"  # how format_prompt_line writes them: negative, size, steps, CFG, seed


def split_prompt_line(line: str) -> tuple[str, dict[str, str]]:
    """The prompt and its options exactly as written ({"w": "512", "n": "blurry"}); a later repeat of a flag wins,
    as in parsing. Defaults are not filled in: an option left out keeps meaning "the trainer's default"."""
    parts = OPTION.split(" " + line.strip())
    return parts[0].strip(), {flag: value.strip() for flag, value in zip(parts[1::2], parts[2::2], strict=True)}


def format_prompt_line(prompt: str, options: dict[str, str]) -> str:
    """kohya's line for a prompt and its options (the inverse of split_prompt_line); empty options are left out."""
    written = [f"--{flag} {options[flag].strip()}" for flag in OPTION_ORDER if str(options.get(flag, "")).strip()]
    return " ".join([prompt.strip(), *written])


def parse_prompt_line(line: str, default_size: tuple[int, int], index: int) -> SamplePrompt:
    prompt, options = split_prompt_line(line)
    sample = SamplePrompt(prompt, width=default_size[0], height=default_size[1], seed=1234 + index)
    for flag, value in options.items():
        try:
            if flag == "n":
                sample.negative = value
            elif flag in "wh":
                size = max(64, int(value) // 8 * 8)
                setattr(sample, "width" if flag == "w" else "height", size)
            elif flag == "d":
                sample.seed = int(value)
            elif flag == "l":
                sample.cfg_scale = float(value)
            elif flag == "s":
                sample.steps = max(1, min(int(value), 150))
        except ValueError:
            raise UserError(f"sample prompt {index + 1}: --{flag} {value!r} is not a number") from None
    return sample


def load_prompts(spec: str | None, default_size: tuple[int, int]) -> list[SamplePrompt]:
    """Prompts from a file path or from the text itself (';'-separated)."""
    return [parse_prompt_line(line, default_size, i) for i, line in enumerate(prompt_lines(spec))]


def is_prompt_file(spec: str) -> bool:
    """Whether a sample_prompts value names a file (by its suffix or because it exists) rather than holding prompts."""
    path = Path(spec).expanduser()
    return path.suffix.lower() in PROMPT_FILE_SUFFIXES or path.exists()


def prompt_lines(spec: str | None) -> list[str]:
    """The prompt lines of a sample_prompts value, from its file or its ';'-separated text, comments left out."""
    if not spec:
        return []
    path = Path(spec).expanduser()
    if is_prompt_file(spec):
        if not path.is_file():
            raise UserError(f"sample_prompts: file {path} not found; give a prompt file or prompts split by ';'")
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    else:
        lines = spec.split(";")
    return [ln for ln in (x.strip() for x in lines) if ln and not ln.startswith("#")]
