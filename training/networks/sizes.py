"""How many values and tensors each network type stores per module, from the module's shape alone (torch-free: the
size estimate uses it on the module tables, the tests check it against the peft layers the engine builds).

Per module, besides one alpha scalar:

- LoRA/LoCon: down (rank x in x k x k) and up (out x rank); DoRA adds one magnitude per output;
- LoHa: two Hadamard factor pairs, each (out x rank) and (rank x in x k x k); with Tucker on a k > 1 conv, each
  pair is a core (rank x rank x k x k) with (rank x out) and (rank x in);
- LoKr: out = a*b and in = c*d split by ``factorization``; w1 (a x c) full, or a x rank and rank x c when
  decompose_both is set and the rank is below half its larger side; w2 (b x d x k x k) full when the rank is at
  least half of max(b, d), else b x rank and rank x d*k*k, or with Tucker on a k > 1 conv a core
  (rank x rank x k x k) with (rank x b) and (rank x d).
"""

from __future__ import annotations

from dataclasses import dataclass

from training.contract.network import NetworkSpec
from training.networks.targets import ModuleInfo, Part, Ranks, Target, factorization


@dataclass(frozen=True)
class LokrShape:
    out_split: tuple[int, int]  # (a, b): out = a * b
    in_split: tuple[int, int]  # (c, d): in = c * d
    full_w1: bool
    full_w2: bool


def lokr_shape(module: ModuleInfo, rank: int, spec: NetworkSpec) -> LokrShape:
    """How LoKr factors this module at ``rank`` (peft's rule, which is LyCORIS's)."""
    out_l, out_k = factorization(module.out_features, spec.factor)
    in_m, in_n = factorization(module.in_features, spec.factor)
    full_w1 = not (spec.decompose_both and rank < max(out_l, in_m) / 2)
    full_w2 = rank >= max(out_k, in_n) / 2
    return LokrShape((out_l, out_k), (in_m, in_n), full_w1, full_w2)


@dataclass(frozen=True)
class ModuleSize:
    values: int  # every stored value but the alpha scalar
    tensors: int  # tensors in the file, alpha included
    conv: bool  # trained at the conv rank (a 3x3 conv)


def _tucker(module: ModuleInfo, spec: NetworkSpec) -> bool:
    return spec.use_tucker and module.kernel > 1


def _lora(m: ModuleInfo, rank: int, spec: NetworkSpec) -> tuple[int, int]:
    values = rank * m.in_features * m.kernel * m.kernel + m.out_features * rank
    if spec.dora_wd:
        return values + m.out_features, 4
    return values, 3


def _loha(m: ModuleInfo, rank: int, spec: NetworkSpec) -> tuple[int, int]:
    if _tucker(m, spec):
        return 2 * (rank * rank * m.kernel * m.kernel + rank * m.out_features + rank * m.in_features), 7
    return 2 * (m.out_features * rank + rank * m.in_features * m.kernel * m.kernel), 5


def _lokr(m: ModuleInfo, rank: int, spec: NetworkSpec) -> tuple[int, int]:
    shape = lokr_shape(m, rank, spec)
    (a, b), (c, d) = shape.out_split, shape.in_split
    k2 = m.kernel * m.kernel
    w1 = (a * c, 1) if shape.full_w1 else (a * rank + rank * c, 2)
    if shape.full_w2:
        w2 = (b * d * k2, 1)
    elif _tucker(m, spec):
        w2 = (rank * rank * k2 + rank * b + rank * d, 3)
    else:
        w2 = (b * rank + rank * d * k2, 2)
    return w1[0] + w2[0], w1[1] + w2[1] + 1


def module_size(target: Target, spec: NetworkSpec, ranks: Ranks, part: Part = "unet") -> ModuleSize:
    """What ``spec``'s adapter on ``target`` (a module of ``part``) stores, at its own rank (per block, per module)."""
    rank = ranks.of_target(target, part)[0]
    values, tensors = {"lora": _lora, "loha": _loha, "lokr": _lokr}[spec.algo](target.module, rank, spec)
    return ModuleSize(values, tensors, target.conv_rank)
