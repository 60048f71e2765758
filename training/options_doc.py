"""Generate docs/options.md from TrainConfig, so the documentation can never drift from the defaults.

    python -m training.options_doc > docs/options.md
"""

from __future__ import annotations

from training.contract.config import SECTIONS, TrainConfig, field_section, field_title
from training.contract.config_io import IGNORED_KOHYA_KEYS, UNSUPPORTED_KOHYA_KEYS, allowed_values


def options_markdown() -> str:
    lines = ["# Training options", "",
             "Generated from `training/contract/config.py` by `python -m training.options_doc > docs/options.md`; "
             "a test fails when this file is stale.", "",
             "Names follow kohya-ss/sd-scripts where kohya has the option. In a TOML file the `[section]` headers "
             "are for grouping only (kohya's own section names work too).", ""]
    for section in SECTIONS:
        names = [n for n in TrainConfig.model_fields if field_section(n) == section]
        lines += [f"## [{section}]", "", "| key | default | allowed | why | label in the UI |",
                  "|---|---|---|---|---|"]
        for name in names:
            field = TrainConfig.model_fields[name]
            default = "unset" if field.default is None else f"`{field.default!r}`".replace("|", "\\|")
            allowed = allowed_values(name).replace("|", "\\|")
            why = (field.description or "").replace("|", "\\|")  # '|||' in a reason must not split the row
            lines.append(f"| `{name}` | {default} | {allowed} | {why} | {field_title(name)} |")
        lines.append("")
    lines += ["## kohya keys this trainer does not use", "",
              "kohya options that mean nothing here are ignored with a note. Options for features this trainer "
              "does not have (yet) are refused: loading stops with a message naming the key, so nobody trains "
              "without what they asked for. Any other key that is not in the tables above is an error with a "
              "suggestion.", "",
              "| key | ignored because |", "|---|---|"]
    lines += [f"| `{key}` | {why} |" for key, why in IGNORED_KOHYA_KEYS.items()]
    lines += ["", "Refused: " + ", ".join(f"`{key}`" for key in UNSUPPORTED_KOHYA_KEYS) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(options_markdown(), end="")
