"""Less memory for the same LoRA: the frozen base in float8 (``fp8_base``), LoRA weights and gradients in bf16 with
stochastic rounding (``full_bf16``).

fp8: each frozen Linear and Conv2d weight is stored in float8_e4m3fn (one byte per weight instead of two) and
upcast to the compute dtype inside that layer's forward, so only one layer's weight exists in full precision at a
time. SD weights sit far inside e4m3's range (|w| <= 448), so they are stored unscaled, with e4m3's 3-bit mantissa
(a relative rounding error up to 1/16).

bf16 updates: a LoRA weight near 1e-2 moved by 1e-6 per step stays exactly where it is in bf16 when rounded to
nearest (its spacing there is ~6e-5): the LoRA stops learning. Rounding up or down at random, in proportion to the
distance, keeps every update on average.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

FP8 = torch.float8_e4m3fn


class Fp8Linear(nn.Linear):
    """A frozen Linear whose weight is stored in fp8 and upcast for each forward."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return nn.functional.linear(x.to(self.compute_dtype), self.weight.to(self.compute_dtype), bias)


class Fp8Conv2d(nn.Conv2d):
    """A frozen Conv2d whose weight is stored in fp8 and upcast for each forward."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return self._conv_forward(x.to(self.compute_dtype), self.weight.to(self.compute_dtype), bias)


FP8_CLASSES = {nn.Linear: Fp8Linear, nn.Conv2d: Fp8Conv2d}


def frozen_layers(model: nn.Module) -> Iterable[nn.Module]:
    """The plain Linear and Conv2d layers whose weights are not trained (inside a peft layer too: its base layer)."""
    for module in model.modules():
        if type(module) in FP8_CLASSES and not module.weight.requires_grad:
            yield module


def store_in_fp8(model: nn.Module, compute_dtype: torch.dtype) -> int:
    """Every frozen Linear/Conv2d weight of ``model`` to fp8, upcast to ``compute_dtype`` in its forward. Returns
    the bytes saved. Must come after the model's last ``.to(dtype)``, which would cast the weights back."""
    saved = 0
    for module in list(frozen_layers(model)):
        weight = module.weight
        saved += weight.numel() * (weight.element_size() - 1)
        module.weight = nn.Parameter(weight.detach().to(FP8), requires_grad=False)
        module.__class__ = FP8_CLASSES[type(module)]
        module.compute_dtype = compute_dtype
    return saved


def stochastic_round_to_bf16(values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """float32 to bf16 rounding up or down at random, with the probability of each given by the distance: the
    expected value is the float32 value. bf16 is float32's upper 16 bits; adding uniform noise to the lower 16
    bits and truncating does exactly that."""
    bits = values.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, device=bits.device, dtype=torch.int32, generator=generator)
    truncated = (bits + noise) & -65536  # clear the low 16 bits
    return truncated.view(torch.float32).to(torch.bfloat16)


class StochasticAdamW(torch.optim.Optimizer):
    """AdamW for bf16 LoRA weights: moments in float32 (a LoRA is small), the update computed in float32 and
    written back with stochastic rounding, so updates below bf16's spacing still move the weights on average."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                grad = p.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"]
                step_size = group["lr"] / (1 - beta1**step)
                denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                updated = p.float().mul_(1 - group["lr"] * group["weight_decay"])
                updated.addcdiv_(state["exp_avg"], denom, value=-step_size)
                p.copy_(stochastic_round_to_bf16(updated) if p.dtype == torch.bfloat16 else updated)
        return loss
