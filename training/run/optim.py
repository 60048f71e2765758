"""Optimizer and learning-rate schedule factories. Optional optimizers come from extras with a clear message.

optimizer_args and lr_scheduler_args reach the optimizer's and the schedule's constructors as sd-scripts passes them
(``key=value``, each value a Python literal). What optimizer_args leaves out keeps this trainer's defaults
(``DEFAULT_ARGS``). A key the chosen class does not take is refused in one line that lists the keys it does take.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from training.contract.config import ADAFACTOR_TRANSFORMERS_ARGS, TrainConfig
from training.contract.errors import UserError
from training.models.low_precision import StochasticAdamW
from training.run.compiled import fused_optimizer_options

# optimizer_type -> (module, class name, pip extra that provides it)
OPTIONAL = {
    "AdamW8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "Lion": ("bitsandbytes.optim", "Lion", "bitsandbytes"),
    "Prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
}

# This trainer's defaults where optimizer_args says nothing: kohya's weight decay for the Adam family and Lion,
# Prodigy's warm-up safeguards (its step size otherwise overshoots in the first steps), Adafactor with fixed rates.
DEFAULT_ARGS: dict[str, dict[str, Any]] = {
    "AdamW": {"weight_decay": 1e-2},
    "AdamW8bit": {"weight_decay": 1e-2},
    "Lion": {"weight_decay": 1e-2},
    "Prodigy": {"weight_decay": 1e-2, "safeguard_warmup": True, "use_bias_correction": True},
    "Adafactor": {"weight_decay": 0.0},
}
# Constructor parameters that are not settings: the trainer passes them itself.
NOT_SETTINGS = {"self", "params", "lr"}


def _import_optional(name: str) -> type:
    module, cls, package = OPTIONAL[name]
    try:
        mod = __import__(module, fromlist=[cls])
    except Exception as err:  # bitsandbytes can fail with OSError/RuntimeError, not only ImportError
        raise UserError(
            f"optimizer_type = '{name}' needs the '{package}' package ({type(err).__name__}: {err}); "
            f"install it with: pip install -e \".[optim]\"  or choose optimizer_type = 'AdamW'") from None
    return getattr(mod, cls)


def uses_transformers_adafactor(cfg: TrainConfig) -> bool:
    """kohya's Adafactor (transformers') when optimizer_args asks for one of its own settings (relative_step,
    scale_parameter, warmup_init...); torch's Adafactor otherwise, as before those settings existed."""
    return cfg.optimizer_type == "Adafactor" and bool(set(cfg.optimizer_kwargs) & set(ADAFACTOR_TRANSFORMERS_ARGS))


def optimizer_class(cfg: TrainConfig) -> type:
    name = cfg.optimizer_type
    if name == "AdamW" and cfg.full_bf16:
        return StochasticAdamW  # bf16 LoRA weights: the update rounded stochastically
    if name == "AdamW":
        return torch.optim.AdamW
    if name == "Adafactor":
        if uses_transformers_adafactor(cfg):
            from transformers.optimization import Adafactor

            return Adafactor
        return torch.optim.Adafactor  # torch >= 2.5
    return _import_optional(name)


def accepted_args(cls: type) -> list[str]:
    """The settings a class's constructor takes by name."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind in named and p.name not in NOT_SETTINGS]


def optimizer_kwargs(cfg: TrainConfig, cls: type) -> dict[str, Any]:
    """Our defaults overlaid with optimizer_args, after checking each key is one the class takes."""
    given = cfg.optimizer_kwargs
    accepted = accepted_args(cls)
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise UserError(f"optimizer_args: {cfg.optimizer_type} ({cls.__module__}.{cls.__name__}) takes no "
                        f"'{unknown[0]}'; it takes: {', '.join(accepted)}")
    kwargs = {k: v for k, v in DEFAULT_ARGS[cfg.optimizer_type].items() if k in accepted} | given
    if cls.__module__.startswith("transformers"):
        kwargs.setdefault("relative_step", False)  # fixed learning rates unless asked, as torch's Adafactor
        kwargs.setdefault("scale_parameter", False)
        if kwargs.get("warmup_init"):
            kwargs["relative_step"] = True  # kohya's rule: warmup_init only exists with relative steps
    return kwargs


def check_optimizer_settings(cfg: TrainConfig) -> None:
    """optimizer_args and the schedule's choice checked before any model loads (one line each)."""
    relative = bool(optimizer_kwargs(cfg, optimizer_class(cfg)).get("relative_step"))
    if cfg.lr_scheduler_type:
        custom_scheduler_class(cfg.lr_scheduler_type)
        refuse_warmup_with_a_class(cfg)
    elif cfg.lr_scheduler == "adafactor" and not relative:
        refuse_adafactor_schedule()


def refuse_warmup_with_a_class(cfg: TrainConfig) -> None:
    if cfg.lr_warmup_steps:
        raise UserError(f"lr_warmup_steps = {cfg.lr_warmup_steps:g} does nothing with lr_scheduler_type = "
                        f"'{cfg.lr_scheduler_type}'; set lr_warmup_steps = 0 (kohya refuses it too)")


def refuse_adafactor_schedule() -> None:
    raise UserError("lr_scheduler = 'adafactor' reports Adafactor's own step sizes: use it with "
                    "optimizer_type = 'Adafactor' and optimizer_args relative_step=True, or choose another "
                    "lr_scheduler")


def make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """groups: [{"params": [...], "lr": ...}, ...] -- one per trained part so each keeps its own learning rate."""
    cls = optimizer_class(cfg)
    kwargs = optimizer_kwargs(cfg, cls)
    if kwargs.get("relative_step"):
        # Adafactor finds its own step size: a given rate would be refused by it (kohya drops the groups' rates too;
        # learning_rate becomes the schedule's reported start, see make_scheduler).
        groups = [{k: v for k, v in g.items() if k != "lr"} for g in groups]
        kwargs["lr"] = None
    if cls is torch.optim.AdamW:  # the fused kernel where it exists (CUDA, or a compiled CPU run)
        params = [p for g in groups for p in g["params"]]
        kwargs = fused_optimizer_options(cls, params, cfg.torch_compile) | kwargs
    try:
        return cls(groups, **kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"optimizer_args: {cfg.optimizer_type} refused {kwargs}: {err}") from None


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """lr_warmup_steps below 1 is a share of the run (kohya accepts both forms)."""
    value = cfg.lr_warmup_steps
    return math.ceil(value * total_steps) if value < 1 else int(value)


def decay_steps(cfg: TrainConfig, total_steps: int) -> int:
    """lr_decay_steps below 1 is a share of the run, as kohya reads it."""
    value = cfg.lr_decay_steps
    return int(value * total_steps) if value < 1 else int(value)


def custom_scheduler_class(path: str) -> type:
    """lr_scheduler_type: ``module.Class``, or a bare class name of torch.optim.lr_scheduler (kohya's rule)."""
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name or "torch.optim.lr_scheduler")
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"lr_scheduler_type = '{path}' cannot be imported ({type(err).__name__}: {err}); give a "
                        f"class path such as torch.optim.lr_scheduler.StepLR, or leave it empty to use "
                        f"lr_scheduler") from None
    if not isinstance(cls, type):
        raise UserError(f"lr_scheduler_type = '{path}' is not a class; give one such as "
                        f"torch.optim.lr_scheduler.StepLR")
    return cls


def _built(what: str, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A schedule built from the user's settings; a setting it refuses is one line naming them."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"{what}: the schedule refused its settings ({type(err).__name__}: {err}); check "
                        f"lr_scheduler_args") from None


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The learning-rate schedule, chosen as sd-scripts chooses it: lr_scheduler_type first, then Adafactor's own
    schedule when it finds its step size, then lr_scheduler by name; lr_scheduler_args go to each constructor."""
    kwargs, warmup = cfg.lr_scheduler_kwargs, warmup_steps(cfg, total_steps)
    if cfg.lr_scheduler_type:
        refuse_warmup_with_a_class(cfg)
        cls = custom_scheduler_class(cfg.lr_scheduler_type)
        return _built(f"lr_scheduler_type = '{cfg.lr_scheduler_type}'", cls, optimizer, **kwargs)
    is_relative = bool(optimizer.defaults.get("relative_step"))
    if cfg.lr_scheduler == "adafactor" or is_relative:
        return adafactor_schedule(cfg, optimizer, is_relative)
    return named_scheduler(cfg, optimizer, total_steps, warmup, kwargs)


def adafactor_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, is_relative: bool):
    """transformers' AdafactorSchedule: reports the step sizes Adafactor chose (relative_step=True only)."""
    if not is_relative:
        refuse_adafactor_schedule()
    from transformers.optimization import AdafactorSchedule

    return AdafactorSchedule(optimizer, cfg.learning_rate)


def named_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int,
                    kwargs: dict[str, Any]):
    """lr_scheduler by name: diffusers' schedules, and transformers' for the three diffusers lacks."""
    from diffusers import optimization as diffusers_schedules
    from transformers import optimization as transformers_schedules

    name, what = cfg.lr_scheduler, f"lr_scheduler = '{cfg.lr_scheduler}'"
    if name == "piecewise_constant":
        return _built(what, diffusers_schedules.get_piecewise_constant_schedule, optimizer, **kwargs)
    if name == "constant":
        return _built(what, diffusers_schedules.get_constant_schedule, optimizer, **kwargs)
    if name == "constant_with_warmup":
        return _built(what, diffusers_schedules.get_constant_schedule_with_warmup, optimizer, warmup, **kwargs)
    if name == "inverse_sqrt":
        return _built(what, transformers_schedules.get_inverse_sqrt_schedule, optimizer, warmup,
                      timescale=cfg.lr_scheduler_timescale, **kwargs)
    span = {"num_warmup_steps": warmup, "num_training_steps": total_steps}
    if name == "cosine_with_restarts":
        return _built(what, diffusers_schedules.get_cosine_with_hard_restarts_schedule_with_warmup, optimizer,
                      **span, num_cycles=cfg.lr_scheduler_num_cycles, **kwargs)
    if name == "polynomial":
        return _built(what, diffusers_schedules.get_polynomial_decay_schedule_with_warmup, optimizer, **span,
                      power=cfg.lr_scheduler_power, **kwargs)
    if name == "cosine_with_min_lr":  # kohya passes half the cycles: one cycle is a half cosine, start to minimum
        return _built(what, transformers_schedules.get_cosine_with_min_lr_schedule_with_warmup, optimizer, **span,
                      num_cycles=cfg.lr_scheduler_num_cycles / 2, min_lr_rate=cfg.lr_scheduler_min_lr_ratio or 0.0,
                      **kwargs)
    if name == "warmup_stable_decay":
        decay = decay_steps(cfg, total_steps)
        return _built(what, transformers_schedules.get_wsd_schedule, optimizer, warmup, decay,
                      num_stable_steps=total_steps - warmup - decay, num_cycles=cfg.lr_scheduler_num_cycles / 2,
                      min_lr_ratio=cfg.lr_scheduler_min_lr_ratio or 0.0, **kwargs)
    factory = {"linear": diffusers_schedules.get_linear_schedule_with_warmup,
               "cosine": diffusers_schedules.get_cosine_schedule_with_warmup}[name]
    return _built(what, factory, optimizer, **span, **kwargs)
