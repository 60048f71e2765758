"""optimizer_args, lr_scheduler_args, lr_scheduler_type, lr_scheduler_power and kohya's other schedules: each reaches
the optimizer or the schedule it names, with the numbers written out here."""

from __future__ import annotations

import math

import pytest
import torch

from training.contract.config import TrainConfig
from training.contract.config_io import ConfigError, load_config
from training.contract.errors import UserError
from training.run.optim import check_optimizer_settings, make_optimizer, make_scheduler


def params():
    return [{"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 1e-3},
            {"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 2e-4}]


def group(cfg: TrainConfig) -> dict:
    return make_optimizer(cfg, params()).param_groups[0]


@pytest.mark.parametrize(("name", "args", "expected"), [
    ("AdamW", "weight_decay=0.1 betas=(0.8,0.95) eps=1e-6",
     {"weight_decay": 0.1, "betas": (0.8, 0.95), "eps": 1e-6}),
    ("AdamW8bit", "weight_decay=0.2 betas=(0.85, 0.99) eps=1e-7",
     {"weight_decay": 0.2, "betas": (0.85, 0.99), "eps": 1e-7}),
    ("Lion", "betas=(0.95, 0.98) weight_decay=0.3", {"betas": (0.95, 0.98), "weight_decay": 0.3}),
    ("Prodigy", "d_coef=2.5 decouple=False use_bias_correction=False safeguard_warmup=False weight_decay=0.05",
     {"d_coef": 2.5, "decouple": False, "use_bias_correction": False, "safeguard_warmup": False,
      "weight_decay": 0.05}),
    ("Adafactor", "weight_decay=0.01 eps=(None, 0.01)", {"weight_decay": 0.01, "eps": (None, 0.01)}),
    ("Adafactor", "relative_step=False scale_parameter=True clip_threshold=2.0",
     {"relative_step": False, "scale_parameter": True, "clip_threshold": 2.0}),
])
def test_optimizer_args_reach_the_optimizers_param_groups(name, args, expected):
    if name in ("AdamW8bit", "Lion"):
        pytest.importorskip("bitsandbytes")
    if name == "Prodigy":
        pytest.importorskip("prodigyopt")
    g = group(TrainConfig(optimizer_type=name, optimizer_args=args))
    assert {k: g[k] for k in expected} == expected


def test_unset_optimizer_args_keep_our_defaults():
    assert group(TrainConfig(optimizer_type="AdamW", optimizer_args=["eps=1e-6"]))["weight_decay"] == 1e-2
    prodigy = group(TrainConfig(optimizer_type="Prodigy", optimizer_args=["d_coef=2"]))
    assert prodigy["safeguard_warmup"] is True and prodigy["use_bias_correction"] is True


def test_an_argument_the_optimizer_does_not_take_is_refused_naming_the_accepted_ones():
    cfg = TrainConfig(optimizer_type="AdamW", optimizer_args=["d_coef=2"])
    with pytest.raises(UserError, match=r"AdamW .* takes no 'd_coef'; it takes: betas, eps, weight_decay"):
        check_optimizer_settings(cfg)


def test_a_value_that_is_not_a_literal_is_refused_in_one_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('optimizer_args = ["weight_decay=lots"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "optimizer_args" in str(err.value) and "\n" not in str(err.value)


def test_adafactor_relative_step_finds_its_own_step_size_with_kohyas_schedule():
    """relative_step=True: transformers' Adafactor with no fixed rate, and AdafactorSchedule reporting the rate it
    chose, which for the first step of a zero-initialised parameter is min(1e-2, 1/sqrt(1)) times RMS floor 1e-3
    when scale_parameter (eps[1] = 1e-3), as transformers' _get_lr computes."""
    cfg = TrainConfig(optimizer_type="Adafactor", optimizer_args=["relative_step=True", "scale_parameter=True"])
    optimizer = make_optimizer(cfg, params())
    assert type(optimizer).__module__.startswith("transformers") and optimizer.param_groups[0]["lr"] is None
    scheduler = make_scheduler(cfg, optimizer, 10)
    assert type(scheduler).__name__ == "AdafactorSchedule"
    for g in optimizer.param_groups:
        g["params"][0].grad = torch.ones(4)
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([min(1e-2, 1 / math.sqrt(1)) * 1e-3] * 2)


def test_warmup_init_turns_relative_step_on_as_kohya_does():
    cfg = TrainConfig(optimizer_type="Adafactor", optimizer_args=["relative_step=False", "warmup_init=True"])
    assert make_optimizer(cfg, params()).defaults["relative_step"] is True


def test_the_adafactor_schedule_needs_relative_step():
    cfg = TrainConfig(optimizer_type="AdamW", lr_scheduler="adafactor")
    with pytest.raises(UserError, match="relative_step=True"):
        check_optimizer_settings(cfg)
    with pytest.raises(UserError, match="relative_step=True"):
        make_scheduler(cfg, make_optimizer(cfg, params()), 10)


def test_a_schedule_class_refuses_a_warmup_as_kohya_does():
    with pytest.raises(UserError, match="set lr_warmup_steps = 0"):
        check_optimizer_settings(TrainConfig(lr_scheduler_type="StepLR", lr_warmup_steps=10))


def lrs_over(cfg: TrainConfig, steps: int, total: int) -> list[float]:
    optimizer = make_optimizer(cfg, params())
    scheduler = make_scheduler(cfg, optimizer, total)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_lr_scheduler_power_gives_the_polynomial_formula():
    """After warm-up: (lr - lr_end) * (1 - (t - w) / (T - w)) ** power + lr_end, diffusers' lr_end = 1e-7."""
    lr, lr_end, warmup, total, power = 1e-3, 1e-7, 4, 20, 2.5
    cfg = TrainConfig(lr_scheduler="polynomial", lr_scheduler_power=power, lr_warmup_steps=warmup)
    got = lrs_over(cfg, total, total)
    for t in (0, 2, 4, 9, 15, 19):
        expected = lr * t / warmup if t < warmup else \
            (lr - lr_end) * (1 - (t - warmup) / (total - warmup)) ** power + lr_end
        assert got[t] == pytest.approx(expected, rel=1e-6), t


def test_lr_scheduler_type_builds_a_torch_class_from_lr_scheduler_args():
    """StepLR(step_size=2, gamma=0.5): lr * 0.5 ** (t // 2)."""
    cfg = TrainConfig(lr_scheduler_type="torch.optim.lr_scheduler.StepLR", lr_scheduler_args=["step_size=2",
                                                                                              "gamma=0.5"])
    assert lrs_over(cfg, 7, 7) == pytest.approx([1e-3 * 0.5 ** (t // 2) for t in range(7)])
    bare = TrainConfig(lr_scheduler_type="StepLR", lr_scheduler_args="step_size=3 gamma=0.1")  # kohya: torch's
    assert lrs_over(bare, 7, 7) == pytest.approx([1e-3 * 0.1 ** (t // 3) for t in range(7)])


@pytest.mark.parametrize("path", ["no_such_module.Schedule", "torch.optim.lr_scheduler.NoSuchLR"])
def test_an_unimportable_lr_scheduler_type_is_refused_before_training(path):
    with pytest.raises(UserError, match=rf"lr_scheduler_type = '{path}' cannot be imported"):
        check_optimizer_settings(TrainConfig(lr_scheduler_type=path))


def test_lr_scheduler_args_a_class_does_not_take_are_one_line():
    cfg = TrainConfig(lr_scheduler_type="StepLR", lr_scheduler_args=["steps=2"])
    with pytest.raises(UserError, match="check lr_scheduler_args"):
        make_scheduler(cfg, make_optimizer(cfg, params()), 10)


def test_piecewise_constant_takes_its_step_rules_from_lr_scheduler_args():
    """step_rules '1:3,0.1': factor 1 before step 3, 0.1 after."""
    cfg = TrainConfig(lr_scheduler="piecewise_constant", lr_scheduler_args=["step_rules='1:3,0.1'"])
    assert lrs_over(cfg, 6, 6) == pytest.approx([1e-3] * 3 + [1e-4] * 3)


def test_cosine_with_min_lr_stops_at_the_ratio():
    """kohya passes half the cycles: lr * (r + (1 - r) * 0.5 * (1 + cos(pi * p))), p the progress after warm-up."""
    ratio, total = 0.2, 10
    cfg = TrainConfig(lr_scheduler="cosine_with_min_lr", lr_scheduler_min_lr_ratio=ratio)
    got = lrs_over(cfg, total, total)
    for t in range(total):
        cosine = 0.5 * (1 + math.cos(math.pi * t / total))
        assert got[t] == pytest.approx(1e-3 * (ratio + (1 - ratio) * cosine), rel=1e-6)


def test_warmup_stable_decay_holds_then_decays_over_lr_decay_steps():
    """2 warm-up steps (from the minimum ratio 0.1 up, transformers' linear warm-up), 4 stable, 4 of cosine decay
    back to the minimum."""
    cfg = TrainConfig(lr_scheduler="warmup_stable_decay", lr_warmup_steps=2, lr_decay_steps=4,
                      lr_scheduler_min_lr_ratio=0.1)
    got = lrs_over(cfg, 10, 10)
    assert got[:2] == pytest.approx([1e-4, 1e-3 * (0.1 + 0.9 / 2)]) and got[2:6] == pytest.approx([1e-3] * 4)
    for t in range(6, 10):
        cosine = 0.5 * (1 + math.cos(math.pi * (t - 6) / 4))
        assert got[t] == pytest.approx(1e-3 * (0.1 + 0.9 * cosine), rel=1e-6)


def test_an_unknown_schedule_name_is_refused_listing_the_known_ones(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr_scheduler = "reduce_lr_on_plateau"\n')
    with pytest.raises(ConfigError, match=r"one of constant.*warmup_stable_decay"):
        load_config(path)


def test_the_forms_one_line_of_args_reads_back_as_the_same_list():
    """The form shows a list as one shell-quoted line; reading it back gives the same key=value strings, brackets
    and literal quotes kept."""
    import shlex

    args = ["betas=(0.9, 0.99)", "weight_decay=0.1", "step_rules='1:3,0.1'"]
    assert TrainConfig(optimizer_args=shlex.join(args)).optimizer_args == args
    assert TrainConfig(optimizer_args="betas=(0.9, 0.99), eps=1e-6").optimizer_kwargs == {
        "betas": (0.9, 0.99), "eps": 1e-6}


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_scale_weight_norms_is_refused_for_networks_without_an_up_down_product(tmp_path, algo):
    path = tmp_path / "run.toml"
    path.write_text(f'scale_weight_norms = 1.0\nnetwork_module = "lycoris.kohya"\nnetwork_args = ["algo={algo}"]\n')
    with pytest.raises(ConfigError, match=r"scale_weight_norms works on LoRA and LoCon") as err:
        load_config(path)
    assert "\n" not in str(err.value)
