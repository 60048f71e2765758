"""Generate docs/options.md from TrainConfig, so the documentation can never drift from the defaults.

    python -m training.options_doc > docs/options.md
"""

from __future__ import annotations

from training.contract.config import SECTIONS, TrainConfig, field_section, field_title
from training.contract.config_io import allowed_values, kohya_differences, toml_text
from training.contract.kohya_keys import KEYS, RANDOM_SEED, KohyaKey


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
    lines += kohya_file_section() + kohya_keys_section()
    return "\n".join(lines)


def kohya_file_section() -> list[str]:
    lines = ["## kohya files", "",
             "A kohya file (written by sd-scripts' `--output_config`, or by hand for `train_network.py`) leaves out "
             "what it does not change, so a key it omits means sd-scripts' default. It is read as a kohya file when "
             "`python -m training` gets `--kohya`, the Model tab's Load TOML has *kohya file* ticked, or the file "
             "has no `schema_version` and no `[preset]` table and holds an sd-scripts key this trainer has no "
             "setting for (`xformers`, `save_model_as`, `optimizer_args`, ...): every file this trainer writes or "
             "ships has one of the two, and such a key only sd-scripts writes. `--no-kohya` turns the detection off. "
             "In a kohya file the keys below, when left out, take sd-scripts' default instead of ours, and loading "
             "says which it took:", "",
             "| key | sd-scripts' default (taken) | ours |", "|---|---|---|"]
    ours = {name: field.default for name, field in TrainConfig.model_fields.items()}
    for name, value in kohya_differences().items():
        taken = "a random seed, written into the resolved config" if value == RANDOM_SEED else f"`{toml_text(value)}`"
        lines.append(f"| `{name}` | {taken} | `{toml_text(ours[name])}` |")
    kept = [key for key in KEYS if key.keep]
    lines += ["", "Ours stays for these, in every file: " + "; ".join(f"`{k.name}` ({k.keep})" for k in kept) + ".",
              "", "Whatever the file, values are read as sd-scripts reads them: `optimizer_type` in any case "
              "(`adamw8bit`, `AdaFactor`), an empty text or `false` for an unset path (`resume = false`), "
              "`text_encoder_lr` as a one-element list, numbers written as text (`learning_rate = \"1e-4\"`), "
              "`use_8bit_adam` / `use_lion_optimizer` as their optimizer, `caption_extention` (the old spelling) as "
              "`caption_extension`. `output_config = true` (or `--output_config`) writes the resolved config and "
              "exits.", ""]
    return lines


def status_text(key: KohyaKey) -> str:
    if key.status == "supported":
        return "supported" + (f" (our default kept: {key.keep})" if key.keep else "")
    return f"{key.status}: {key.reason}"


def kohya_keys_section() -> list[str]:
    """Every sd-scripts option, and whether it is supported, ignored (with what happens instead) or refused."""
    lines = ["## Every sd-scripts option", "",
             "The options of sd-scripts' `train_network.py` and `sdxl_train_network.py` (and two keys the kohya_ss "
             "GUI adds), from `training/contract/kohya_keys.py`. *Supported* keys are the settings above. *Mapped* "
             "ones are read as another setting. *Ignored* ones change how, not what, is trained: they are dropped "
             "with a note. *Refused* ones are features this trainer does not have: a file that turns one on is "
             "refused, naming every such key at once; set to sd-scripts' default (the feature off) they ask for "
             "nothing and are accepted. Any other key is an error with a suggestion.", "",
             "| key | sd-scripts' default | here |", "|---|---|---|"]
    for key in sorted(KEYS, key=lambda k: k.name):
        default = "unset" if key.default is None else f"`{key.default!r}`"
        gui = " (kohya_ss GUI)" if not key.sd_scripts else ""
        lines.append(f"| `{key.name}`{gui} | {default} | {status_text(key)} |".replace("\n", " "))
    lines.append("")
    return lines


if __name__ == "__main__":
    print(options_markdown(), end="")
