"""Caption augmentation with kohya's semantics: ``shuffle_caption``, ``keep_tokens``, ``caption_dropout_rate``."""

from __future__ import annotations

import random

SEPARATOR = ","


def process_caption(caption: str, *, shuffle: bool, keep_tokens: int, dropout_rate: float, rng: random.Random) -> str:
    """Return the caption to train on for one sample.

    - With probability ``dropout_rate`` the caption becomes ``""``: the sample trains the unconditional prediction,
      which helps classifier-free guidance (kohya's caption dropout). Decided first, as kohya does.
    - With ``shuffle``, tags (comma-separated parts) after the first ``keep_tokens`` are shuffled; the kept ones stay
      in front, so a trigger word placed first keeps its position. Tags are stripped and re-joined with ", ";
      empty tags from stray commas are dropped.
    - Without ``shuffle`` the caption is returned unchanged (natural-language captions keep their punctuation).

    ``rng`` is the only source of randomness, so a per-sample seeded ``Random`` makes this reproducible on resume.
    """
    # Draw even when the rate is 0 so the number of draws (and thus the shuffle below) does not depend on the rate.
    dropped = rng.random() < dropout_rate
    if dropped:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(SEPARATOR)]
    tags = [t for t in tags if t]
    keep = max(0, keep_tokens)
    fixed, rest = tags[:keep], tags[keep:]
    rng.shuffle(rest)
    return ", ".join(fixed + rest)
