"""Rebuild the CLIP BPE tokenizer files in this folder from OpenAI's BPE merge list.

The merge list ships inside the open_clip_torch wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``, MIT licence,
copied there from openai/CLIP). We read it straight out of the wheel, so nothing is installed and no model hub is
contacted. Run once by a developer; the generated ``vocab.json`` and ``merges.txt`` are committed:

    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/oc
    python assets/clip_tokenizer/build.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

Vocabulary order (what CLIP's own tokenizer builds in memory): the 256 byte symbols of the GPT-2 byte-to-unicode
map, the same 256 symbols with ``</w>``, one token per merge in merge order, then the two special tokens.
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # 48,894: CLIP keeps a 49,408-token vocabulary
SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable unicode map, in its own order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def read_merges(wheel_or_gz: Path) -> list[str]:
    if wheel_or_gz.suffix == ".whl":
        with zipfile.ZipFile(wheel_or_gz) as wheel:
            raw = wheel.read(MEMBER)
    else:
        raw = wheel_or_gz.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return lines[1 : 1 + N_MERGES]  # first line is a version header


def build(source: Path, out_dir: Path) -> None:
    merges = read_merges(source)
    base = byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m.split()) for m in merges] + list(SPECIAL)
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build.py <open_clip_torch wheel or bpe_simple_vocab_16e6.txt.gz>")
    build(Path(sys.argv[1]), Path(__file__).parent)
    print("wrote vocab.json and merges.txt to", Path(__file__).parent)
