"""README.md stays in step with the code and with CI.

- Set up: exactly two steps, each one Linux/macOS command and the same step as PowerShell lines; the test step's
  pytest invocation, venv and extras are the ones ``.ci/run`` uses; every extra named exists in pyproject.toml; the
  Windows lines install the same extras, take torch from PyTorch's index before the project, and never use ``&&``.
- Every repository file or folder README names exists.
- "What a run folder holds" names every name of ``training/contract/layout.py`` a run writes (a new constant there
  fails until README and this test place it), and its listing holds no name the trainer does not write.
- The events list names every kind in ``EVENT_TYPES`` and no other.

Each check returns a list of problems, so the drift tests below can run it on a doctored copy of README and show
that it fails.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from training.contract import layout
from training.contract.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
PYPROJECT = ROOT / "pyproject.toml"

FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
EXTRAS = re.compile(r"\.\[([\w,-]+)\]")
PYTEST = re.compile(r"\.venv/bin/python -m pytest[^\n&|;]*")
WIN_PY = ".venv\\Scripts\\python.exe"
TORCH_INDEX = "--index-url https://download.pytorch.org/whl/cu"
STEPS = ("**1. Install and run**", "**2. Run the tests**")
LINUX, WINDOWS = "Linux / macOS", "Windows (PowerShell)"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """From a heading line to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert match, f"README has no heading {heading!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def first_block_after(text: str, label: str) -> str | None:
    at = text.find(label)
    if at < 0:
        return None
    block = FENCE.search(text, at)
    return block.group(1).strip() if block else None


def setup_steps(text: str) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    """{step label: {platform: code}} from the Set up section, and the problems with its shape."""
    setup = section(text, "Set up")
    problems = []
    starts = [setup.find(label) for label in STEPS]
    if -1 in starts or starts != sorted(starts):
        return {}, [f"Set up must have the steps {STEPS} in this order"]
    if re.search(r"^\*\*\d+\. ", setup[starts[-1] + 1:], re.M):
        problems.append("Set up has more than two steps")
    bodies = [setup[a:b] for a, b in zip(starts, [*starts[1:], len(setup)], strict=True)]
    steps = {}
    for label, body in zip(STEPS, bodies, strict=True):
        steps[label] = {LINUX: first_block_after(body, LINUX), WINDOWS: first_block_after(body, WINDOWS)}
        if len(FENCE.findall(body)) != 2:
            problems.append(f"{label}: expected exactly two code blocks (Linux/macOS, Windows)")
    for label, codes in steps.items():
        linux, windows = codes[LINUX], codes[WINDOWS]
        if not linux or "\n" in linux:
            problems.append(f"{label}: the Linux/macOS command must be one line")
        if not windows:
            problems.append(f"{label}: no Windows (PowerShell) block")
    return steps, problems


def ci_commands() -> dict[str, str]:
    """What .ci/run does: its venv, its project install (extras) and its pytest invocation."""
    ci = CI.read_text(encoding="utf-8")
    venv = re.search(r"^(python3? -m venv \.venv)$", ci, re.M)
    install = re.search(r"^\.venv/bin/pip install (?:-q )?(-e \"\.\[[\w,-]+\]\")", ci, re.M)
    pytest_call = PYTEST.search(ci)
    assert venv and install and pytest_call, ".ci/run no longer has the venv / install / pytest lines this test reads"
    return {"venv": venv.group(1), "install": install.group(1), "pytest": pytest_call.group(0).strip()}


def setup_problems(text: str) -> list[str]:
    steps, problems = setup_steps(text)
    if not steps or problems:
        return problems
    ci = ci_commands()
    tests_linux = steps[STEPS[1]][LINUX] or ""
    parts = [p.strip() for p in tests_linux.split("&&")]
    if parts[0] != ci["venv"]:
        problems.append(f"the test command makes its venv with {parts[0]!r}, .ci/run with {ci['venv']!r}")
    if f"pip install {ci['install']}" not in tests_linux:
        problems.append(f"the test command does not install {ci['install']} as .ci/run does")
    if parts[-1] != ci["pytest"]:
        problems.append(f"the test command runs {parts[-1]!r}, .ci/run runs {ci['pytest']!r}")
    for label, codes in steps.items():
        linux, windows = codes[LINUX] or "", codes[WINDOWS] or ""
        win_lines = [ln.strip() for ln in windows.splitlines() if ln.strip()]
        if "&&" in windows:
            problems.append(f"{label}: Windows PowerShell 5.1 has no &&")
        if EXTRAS.findall(linux) != EXTRAS.findall(windows):
            problems.append(f"{label}: Linux installs {EXTRAS.findall(linux)}, Windows {EXTRAS.findall(windows)}")
        last_linux = linux.split("&&")[-1].strip()
        last_windows = win_lines[-1].replace(WIN_PY, ".venv/bin/python") if win_lines else ""
        if last_linux != last_windows:
            problems.append(f"{label}: Linux ends with {last_linux!r}, Windows with {win_lines[-1:]!r}")
        torch_at = next((i for i, ln in enumerate(win_lines) if "install torch" in ln), None)
        project_at = next((i for i, ln in enumerate(win_lines) if "install -e" in ln), None)
        if torch_at is None or TORCH_INDEX not in win_lines[torch_at]:
            problems.append(f"{label}: Windows must install torch from {TORCH_INDEX}...")
        elif project_at is None or project_at < torch_at:
            problems.append(f"{label}: Windows must install torch before the project")
        if linux.find("install torch") < 0 or linux.find("install torch") > linux.find("install -e"):
            problems.append(f"{label}: Linux must install torch before the project")
    return problems


def extras_problems(text: str) -> list[str]:
    known = set(tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"])
    named = {extra for group in EXTRAS.findall(text) for extra in group.split(",")}
    named |= set(re.findall(r"the `(\w+)` extra", text))
    if not named:
        return ["README names no extras: has the pattern broken?"]
    return [f"extra {e!r} is not in pyproject.toml" for e in sorted(named - known)]


PATHLIKE = re.compile(r"(?<![\w./<-])((?:\.ci|app|assets|docs|presets|tests|training)/[\w./-]*|launch\.py)")


def file_problems(text: str) -> list[str]:
    """Repository paths written as code or as link targets must exist."""
    code = "\n".join(FENCE.findall(text) + re.findall(r"`([^`\n]+)`", FENCE.sub("", text)))
    links = "\n".join(re.findall(r"\]\(([^)#\s]+)\)", text))
    refs = {m.rstrip("/.") for m in PATHLIKE.findall(code + "\n" + links)}
    if "launch.py" not in refs or "presets/sd15-anime.toml" not in refs:
        return [f"too few paths found, has the pattern broken? {sorted(refs)}"]
    return [f"README names {ref}, which does not exist" for ref in sorted(refs) if not (ROOT / ref).exists()]


# Where README places each name of layout.py. A new constant there fails test_layout_names_are_all_placed until it
# is placed here and README says it.
LISTED = {"JOB_FILE", "CONTROL_DIR", "EVENTS_FILE", "SAMPLE_DIR", "LOGS_DIR", "LOCK_FILE"}  # a line of the listing
IN_STATE = {"STATE_FILE", "NOISE_STATE_FILE"}                                    # inside a state folder's line
SUFFIXES = {"LORA_SUFFIX", "STATE_SUFFIX", "TEMP_SUFFIX", "OLD_STATE_SUFFIX"}  # make up save and temp names
BESIDE = {"LOG_FILE", "PID_FILE", "QUEUED", "CANCELLED", "TERMINATED", "CLOSED", "PRESET_FILE", "LATENT_CACHE_DIR"}


def layout_names() -> dict[str, str]:
    return {k: v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}


def save_entries() -> set[str]:
    """The listing's save lines: a LoRA and a state folder for an epoch save, a step save and the final save."""
    names = [layout.lora_name("<name>", epoch=2), layout.lora_name("<name>", step=500), layout.lora_name("<name>")]
    return {n + layout.LORA_SUFFIX for n in names} | {n + layout.STATE_SUFFIX + "/" for n in names}


def run_folder_problems(text: str) -> list[str]:
    part = section(text, "What a run folder holds")
    block = FENCE.search(part)
    if not block:
        return ["'What a run folder holds' has no listing"]
    lines = block.group(1).splitlines()
    entries = {ln.split()[0] for ln in lines[1:] if ln.startswith("  ") and not ln.startswith("    ") and ln.strip()}
    names = layout_names()
    expected = {names[k] + ("/" if k.endswith("_DIR") else "") for k in LISTED} | save_entries()
    problems = [f"the listing lacks {e}" for e in sorted(expected - entries)]
    problems += [f"the listing has {e}, which no run writes" for e in sorted(entries - expected)]
    problems += [f"the listing does not say a state folder holds {names[k]}" for k in sorted(IN_STATE)
                 if names[k] not in block.group(1)]
    prose = FENCE.sub("", part)
    problems += [f"the run-folder section does not name `{names[k]}`" for k in sorted(BESIDE)
                 if not re.search(rf"`{re.escape(names[k])}/?`", prose)]
    return problems


def event_problems(text: str) -> list[str]:
    part = section(text, "What a run folder holds")
    listed = re.findall(r"^- `(\w+)`:", part, re.M)
    problems = [f"the events list lacks `{k}`" for k in sorted(set(EVENT_TYPES) - set(listed))]
    problems += [f"the events list names `{k}`, which is no event kind" for k in sorted(set(listed) - set(EVENT_TYPES))]
    problems += [f"the events list names `{k}` twice" for k in sorted({k for k in listed if listed.count(k) > 1})]
    return problems


CHECKS = {"setup": setup_problems, "extras": extras_problems, "files": file_problems,
          "run_folder": run_folder_problems, "events": event_problems}


@pytest.mark.parametrize("check", CHECKS)
def test_readme_is_in_step(check):
    assert CHECKS[check](readme()) == []


def test_layout_names_are_all_placed():
    assert set(layout_names()) == LISTED | IN_STATE | SUFFIXES | BESIDE


def test_setup_steps_are_found():
    steps, problems = setup_steps(readme())
    assert not problems
    assert set(steps) == set(STEPS) and all(codes[LINUX] and codes[WINDOWS] for codes in steps.values())
    assert steps[STEPS[1]][LINUX].endswith(ci_commands()["pytest"])


# Each drift: (check, text in README, what it becomes). Every one must make its check fail.
DRIFTS = {
    "pytest differs from CI": ("setup", '.venv/bin/python -m pytest -m "not gpu"\n```\n\nWindows',
                               '.venv/bin/python -m pytest -m "not gpu and not slow"\n```\n\nWindows'),
    "test extras differ from CI": ("setup", '&& .venv/bin/pip install -e ".[dev,optim,tensorboard]" &&',
                                   '&& .venv/bin/pip install -e ".[dev,optim]" &&'),
    "Windows extras differ": ("setup", 'python.exe -m pip install -e ".[dev,optim,tensorboard]"',
                              'python.exe -m pip install -e ".[dev,optim]"'),
    "Windows uses &&": ("setup", "py -m venv .venv\n", "py -m venv .venv && "),
    "Windows torch from the plain index": ("setup", "install torch --index-url https://download.pytorch.org/whl/cu128",
                                           "install torch"),
    "a third step": ("setup", "Why it is written this way:", "**3. Train**\n\nWhy it is written this way:"),
    "unknown extra": ("extras", '-e ".[optim]"', '-e ".[optims]"'),
    "missing file": ("files", "`presets/sdxl-anime.toml`", "`presets/sdxl-anime-v2.toml`"),
    "missing doc link": ("files", "(docs/options.md)", "(docs/option.md)"),
    "listing lacks control/": ("run_folder", "\n  control/ ", "\n  ctrl/ "),
    "listing lacks the step save": ("run_folder", "\n  <name>-step00000500.safetensors",
                                    "\n  <name>-step500.safetensors"),
    "listing lacks the state file": ("run_folder", "train_state.json (step", "state.json (step"),
    "section lacks trainer.pid": ("run_folder", "`trainer.pid`, ", ""),
    "listing has a stale name": ("run_folder", "\n  job.toml ", "\n  config.json   the config\n  job.toml "),
    "events lack warning": ("events", "- `warning`: ", "- warning: "),
    "events name a stale kind": ("events", "- `done`: ", "- `progress`: steps\n- `done`: "),
}


@pytest.mark.parametrize("drift", DRIFTS)
def test_each_check_fails_when_readme_drifts(drift):
    check, old, new = DRIFTS[drift]
    text = readme()
    assert old in text, f"the drift's anchor {old!r} is not in README"
    assert CHECKS[check](text.replace(old, new, 1)), f"{check} did not notice: {drift}"
