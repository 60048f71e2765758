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


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int = 1234
    cfg_scale: float = 7.0
    steps: int = 28


def parse_prompt_line(line: str, default_size: tuple[int, int], index: int) -> SamplePrompt:
    parts = OPTION.split(" " + line.strip())
    sample = SamplePrompt(parts[0].strip(), width=default_size[0], height=default_size[1], seed=1234 + index)
    for flag, value in zip(parts[1::2], parts[2::2], strict=True):
        value = value.strip()
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
    if not spec:
        return []
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".txt", ".prompt", ".prompts") or path.exists():
        if not path.is_file():
            raise UserError(f"sample_prompts: file {path} not found; give a prompt file or prompts split by ';'")
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    else:
        lines = spec.split(";")
    lines = [ln for ln in (x.strip() for x in lines) if ln and not ln.startswith("#")]
    return [parse_prompt_line(line, default_size, i) for i, line in enumerate(lines)]
