"""The run's schedule: its length and the points where it validates, samples and saves (torch-free)."""

from __future__ import annotations

import pytest

from training.contract.config import TrainConfig
from training.plan.schedule import SAMPLE, SAVE, VALIDATE, Action, Schedule, perform


def schedule(batches_per_epoch: int = 5, num_processes: int = 1, **options) -> Schedule:
    return Schedule.build(TrainConfig(output_name="cat", **options), batches_per_epoch, num_processes)


def points(s: Schedule) -> list[tuple[int, Action]]:
    """Every action of a run that is never stopped, with the step it falls at, in the order a run performs them."""
    found = [(0, a) for a in s.at_start(0)]
    validated_at = 0 if found else None
    for step in range(1, s.total_steps + 1):
        actions = s.after_step(step)
        if step % s.steps_per_epoch == 0:
            actions += s.after_epoch(step // s.steps_per_epoch, step)
        found += [(step, a) for a in actions]
        validated_at = step if any(a.kind == VALIDATE for a in actions) else validated_at
    return found + [(s.total_steps, a) for a in s.at_end(s.total_steps, validated_at)]


def kinds(s: Schedule, kind: str) -> list[int]:
    return [step for step, a in points(s) if a.kind == kind]


@pytest.mark.parametrize(("options", "batches", "processes", "expected"), [
    ({"max_train_steps": 12}, 5, 1, (5, 12, 3)),  # steps: the last epoch is cut short
    ({"max_train_epochs": 3, "max_train_steps": 12}, 5, 1, (5, 15, 3)),  # epochs win over steps
    ({"max_train_epochs": 2, "gradient_accumulation_steps": 2}, 5, 1, (3, 6, 2)),  # a partial accumulation steps
    ({"max_train_epochs": 2}, 5, 2, (3, 6, 2)),  # each of two processes takes 3 of the 5 batches
])
def test_length_in_steps_and_epochs(options, batches, processes, expected):
    s = schedule(batches, processes, **options)
    assert (s.steps_per_epoch, s.total_steps, s.total_epochs) == expected
    assert s.batches_per_epoch == batches


def test_validation_interval_explicit_automatic_and_off():
    assert schedule(max_train_steps=100, validation_every_n_steps=7).validation_every == 7
    assert schedule(max_train_steps=100, validation_every_n_steps=None).validation_every == 5  # 20 points a run
    assert schedule(max_train_steps=10, validation_every_n_steps=None).validation_every == 1
    off = schedule(max_train_steps=10, validation_every_n_steps=0)
    assert off.validation_every == 0 and kinds(off, VALIDATE) == []


def test_validation_at_start_every_n_steps_and_at_the_end_unless_just_done():
    assert kinds(schedule(max_train_steps=10, validation_every_n_steps=4), VALIDATE) == [0, 4, 8, 10]
    assert kinds(schedule(max_train_steps=12, validation_every_n_steps=4), VALIDATE) == [0, 4, 8, 12]
    resumed = schedule(max_train_steps=12, validation_every_n_steps=4)
    assert resumed.at_start(6) == []  # a resumed run has its curve's first point already
    assert [a.kind for a in resumed.at_end(12, validated_at=None)] == [VALIDATE, SAVE]


def test_saves_every_n_steps_and_epochs_skip_the_last_step_which_saves_the_final_lora():
    s = schedule(max_train_epochs=2, save_every_n_steps=3, save_every_n_epochs=1, save_state=True,
                 validation_every_n_steps=0)
    saves = [(step, a.name, a.with_state) for step, a in points(s) if a.kind == SAVE]
    assert saves == [(3, "cat-step00000003", True), (5, "cat-000001", True), (6, "cat-step00000006", True),
                     (9, "cat-step00000009", True), (10, "cat", True)]
    plain = schedule(max_train_steps=6, save_every_n_steps=2, validation_every_n_steps=0)
    assert [(step, a.name, a.with_state) for step, a in points(plain) if a.kind == SAVE] == [
        (2, "cat-step00000002", False), (4, "cat-step00000004", False), (6, "cat", False)]


def test_samples_every_n_steps_and_epochs_including_the_last():
    s = schedule(max_train_epochs=2, sample_every_n_steps=4, sample_every_n_epochs=1, validation_every_n_steps=0)
    assert [(step, a.epoch) for step, a in points(s) if a.kind == SAMPLE] == [(4, None), (5, 1), (8, None), (10, 2)]


def test_order_at_one_step_validate_sample_save_then_epoch_save_and_sample():
    s = schedule(max_train_epochs=2, validation_every_n_steps=5, sample_every_n_steps=5, save_every_n_steps=5,
                 save_every_n_epochs=1, sample_every_n_epochs=1)
    assert [a.kind for step, a in points(s) if step == 5] == [VALIDATE, SAMPLE, SAVE, SAVE, SAMPLE]


def test_epoch_of_a_step_is_one_based():
    s = schedule(max_train_steps=12)
    assert [s.epoch_of(step) for step in (0, 1, 5, 6, 10, 11, 12)] == [1, 1, 1, 2, 2, 3, 3]


def test_a_save_counts_the_epoch_its_step_ends_as_done():
    s = schedule(max_train_steps=12)  # 5 steps per epoch
    assert [s.epochs_done(step) for step in (1, 4, 5, 6, 10, 12)] == [0, 0, 1, 1, 2, 2]


def test_requested_save_always_keeps_the_state():
    assert schedule(max_train_steps=10).requested_save(7) == Action(SAVE, "cat-step00000007", with_state=True)


def test_perform_dispatches_in_order_and_returns_the_last_saved_path():
    done = []

    class Recorder:
        def validate(self):
            done.append("validate")

        def sample(self, epoch):
            done.append(f"sample {epoch}")

        def save(self, name, with_state):
            done.append(f"save {name} {with_state}")
            return name

    path = perform(Recorder(), [Action(VALIDATE), Action(SAVE, "a"), Action(SAMPLE, epoch=2), Action(SAVE, "b")])
    assert done == ["validate", "save a False", "sample 2", "save b False"] and path == "b"
