"""The caption a sample trains on, with kohya's caption options (``SubsetOptions``), in kohya's order:

1. ``caption_prefix`` / ``caption_suffix`` joined with a space: they are part of the caption from then on, so they
   are shuffled and dropped with it and count toward ``keep_tokens``.
2. Caption dropout: the whole caption becomes ``""`` with probability ``caption_dropout_rate``, and on every
   ``caption_dropout_every_n_epochs``-th epoch (1-based, as kohya counts).
3. Wildcards (``enable_wildcard``): each ``{a|b|c}`` becomes one of its choices; ``{{`` and ``}}`` are literal braces.
4. Tags (when shuffling, tag dropout or token warm-up is on): the caption splits at ``caption_separator`` into a
   fixed head (the text before ``keep_tokens_separator``, else the first ``keep_tokens`` tags), the flexible tags
   and a fixed tail (after a second ``keep_tokens_separator``). Token warm-up keeps only the first flexible tags
   early in the run, then those are shuffled, then each is dropped with ``caption_tag_dropout_rate``; the parts
   are joined with ", ".
5. ``secondary_separator`` (``sky;;;cloud``: one tag above) becomes ``caption_separator``.

Every random choice comes from the ``rng`` passed in, so a per-sample seeded ``Random`` repeats them on resume.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass

from training.data.subset import SubsetOptions

JOIN = ", "
# "{{" and "}}" are literal braces; any other "{...}" without braces inside is a set of choices.
_WILDCARD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass(frozen=True)
class CaptionTime:
    """When in the run a caption is drawn: the 1-based epoch, the optimizer steps done before its batch trains,
    and the run's total steps (a ``token_warmup_step`` below 1 is that share of them)."""

    epoch: int = 1
    step: int = 0
    total_steps: int = 0


def process_caption(caption: str, options: SubsetOptions, rng: random.Random,
                    time: CaptionTime = CaptionTime()) -> str:
    """Return the caption to train on for one sample (see the module's docstring for the steps)."""
    caption = with_prefix_suffix(caption, options)
    # Drawn even when the rate is 0, so the later draws do not depend on it.
    dropped = rng.random() < options.caption_dropout_rate
    every = options.caption_dropout_every_n_epochs
    if dropped or (every > 0 and time.epoch % every == 0):
        return ""
    if options.enable_wildcard:
        caption = fill_wildcards(caption, rng)
    if options.shuffle_caption or options.caption_tag_dropout_rate > 0 or options.token_warmup_step > 0:
        caption = rearrange_tags(caption, options, rng, time)
    elif options.keep_tokens_separator:
        # kohya leaves the separator in the text here and the text encoder reads it: it marks tags, it is no word.
        caption = JOIN.join(p.strip() for p in caption.split(options.keep_tokens_separator) if p.strip())
    if options.secondary_separator:
        caption = caption.replace(options.secondary_separator, options.caption_separator)
    return caption


def with_prefix_suffix(caption: str, options: SubsetOptions) -> str:
    if options.caption_prefix:
        caption = f"{options.caption_prefix} {caption}"
    if options.caption_suffix:
        caption = f"{caption} {options.caption_suffix}"
    return caption


def fill_wildcards(caption: str, rng: random.Random) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)[0]  # "{{" -> "{", "}}" -> "}"
        return rng.choice(match.group(1).split("|"))

    return _WILDCARD.sub(replace, caption)


def split_tags(text: str, separator: str) -> list[str]:
    """The non-empty tags of ``text``, stripped (stray separators make no empty tags)."""
    return [t for t in (t.strip() for t in text.split(separator)) if t]


def caption_parts(caption: str, options: SubsetOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, flexible tags, fixed tail) of a caption, by ``keep_tokens_separator`` when the caption holds it,
    else by ``keep_tokens``."""
    sep, mark = options.caption_separator, options.keep_tokens_separator
    if mark and mark in caption:
        head, flexible = caption.split(mark, 1)
        flexible, _, tail = flexible.partition(mark)
        return split_tags(head, sep), split_tags(flexible, sep), split_tags(tail, sep)
    tags = split_tags(caption, sep)
    keep = max(0, options.keep_tokens)
    return tags[:keep], tags[keep:], []


def warmup_tag_count(flexible: int, options: SubsetOptions, time: CaptionTime) -> int:
    """How many flexible tags a caption keeps at ``time.step`` with token warm-up: ``token_warmup_min`` at step 0,
    growing linearly to all of them at ``token_warmup_step`` (below 1: that share of the run's steps, floored)."""
    until = options.token_warmup_step
    if until < 1:
        until = math.floor(until * time.total_steps)
    if until <= 0 or time.step >= until:
        return flexible
    return math.floor(time.step * (flexible - options.token_warmup_min) / until) + options.token_warmup_min


def rearrange_tags(caption: str, options: SubsetOptions, rng: random.Random, time: CaptionTime) -> str:
    head, flexible, tail = caption_parts(caption, options)
    flexible = flexible[: max(0, warmup_tag_count(len(flexible), options, time))]
    if options.shuffle_caption:
        rng.shuffle(flexible)
    if options.caption_tag_dropout_rate > 0:
        flexible = [t for t in flexible if rng.random() >= options.caption_tag_dropout_rate]
    return JOIN.join(head + flexible + tail)


def fixed_caption(caption: str, options: SubsetOptions) -> str:
    """The caption without its per-step randomness: prefix, suffix, separators and the first wildcard draw of a fixed
    seed applied; no dropout, shuffle or warm-up. For options whose captions do not vary (``not
    options.captions_vary``) it is the caption every non-dropped step trains on (what the text-encoder cache holds);
    the validation loss uses it for every image, so its captions read like the training ones and never change."""
    steady = dataclasses.replace(options, caption_dropout_rate=0.0, caption_dropout_every_n_epochs=0,
                                 shuffle_caption=False, caption_tag_dropout_rate=0.0, token_warmup_step=0.0)
    return process_caption(caption, steady, random.Random(0))
