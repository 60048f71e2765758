"""The Model tab's Network section: a network type (LoRA, LoCon, LoHa, LoKr, DoRA) with its reason, the LyCORIS
module preset, the conv rank fields where they apply, and the file size the choice gives.

The choices only write the config fields (network_module, network_args, conv_dim, conv_alpha; app/network_choice.py
says how); what the section shows is derived back from those fields on every change, so a loaded TOML, a restored
form and the raw network_args box under Advanced all show the type they make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.form import default_values
from app.model_check import detect_model_family
from app.network_choice import (
    NETWORK_FIELDS,
    TYPES,
    choose_preset,
    choose_type,
    network_problem,
    network_view,
    size_line,
)
from app.tabs.context import AppContext
from training.contract.network import LYCORIS_PRESETS
from training.contract.presets import PresetInfo

CONV_FIELDS = ("conv_dim", "conv_alpha")


@dataclass
class NetworkSection:
    kind: Any  # gr.Radio: the network type
    preset: Any  # gr.Dropdown: the LyCORIS module preset
    reason: Any  # gr.Markdown: why this type and preset
    size: Any  # gr.Markdown: the file size and module counts (rendered by the caller, under the fields)
    # Set by wire_network_choice: redraw(form values, applied preset record) -> updates for outputs
    redraw: Callable[[dict[str, Any], dict[str, Any] | None], tuple[Any, ...]] | None = None
    outputs: list[Any] = field(default_factory=list)


def build_network_choice(ctx: AppContext) -> NetworkSection:
    """The type and preset choices, rendered where the caller is (the top of the Network section)."""
    view = network_view(default_values())
    with gr.Row(equal_height=False):
        kind = gr.Radio(list(TYPES), value=view.kind, label="Network type", elem_id="network-type", scale=2,
                        info="What the adapters learn and how big the file gets; writes network_module and "
                             "network_args (under Advanced) for you.")
        preset = gr.Dropdown([(f"{p}", p) for p in LYCORIS_PRESETS], value=view.preset, label="Module preset",
                             info="Which layers get adapters (LyCORIS types); the line below says what the "
                                  "chosen one covers.",
                             elem_id="network-preset", visible=view.lycoris, scale=1)
    reason = gr.Markdown(view.reason, elem_id="network-reason")
    size = gr.Markdown(size_line(default_values(), None), elem_id="network-size", render=False)
    for name in CONV_FIELDS:
        ctx.components[name].visible = view.has_conv  # shown for the types with convolutions
    return NetworkSection(kind, preset, reason, size)


def family_of(model: str, record: dict[str, Any] | None) -> str | None:
    """The base model's family for the size: detected from the model path, else the applied preset's."""
    family, _line = detect_model_family(model)
    return family or (PresetInfo.from_record(record).family if record else None) or None


def wire_network_choice(ctx: AppContext, section: NetworkSection, advanced: Any) -> None:
    """A type or preset picked writes the network fields; section.redraw draws the section from them (the form's
    check calls it on every change)."""
    fields = [ctx.components[n] for n in NETWORK_FIELDS]
    read = {ctx.components[n]: n for n in (*NETWORK_FIELDS, "network_dim", "network_alpha")}

    def written(update: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(update[n] if n in update else gr.skip() for n in NETWORK_FIELDS)

    def pick_type(data: dict[Any, Any]) -> tuple[Any, ...]:
        values = {name: data[c] for c, name in read.items()}
        return written(choose_type(values, data[section.kind]) if data[section.kind] in TYPES else {})

    def pick_preset(data: dict[Any, Any]) -> tuple[Any, ...]:
        values = {name: data[c] for c, name in read.items()}
        return written(choose_preset(values, data[section.preset]) if data[section.preset] else {})

    section.kind.input(pick_type, inputs={section.kind, *read}, outputs=fields, api_visibility="private")
    section.preset.input(pick_preset, inputs={section.preset, *read}, outputs=fields, api_visibility="private")

    def redraw(values: dict[str, Any], record: dict[str, Any] | None) -> tuple[Any, ...]:
        """The type, preset, reason and size the fields make; the conv fields shown where they apply (or hold a
        value); Advanced opened when network_args or network_module has an error, so its message is in sight."""
        view = network_view(values)
        size = size_line(values, family_of(str(values.get("pretrained_model_name_or_path") or ""), record))
        conv = (gr.update(visible=view.has_conv or bool(str(values.get(n) or "").strip())) for n in CONV_FIELDS)
        return (gr.update(value=view.kind), gr.update(value=view.preset, visible=view.lycoris), view.reason, size,
                *conv, gr.update(open=True) if network_problem(values) else gr.skip())

    # The form's check (app/tabs/model.py) calls redraw on every change and on page load: one event, not two.
    section.redraw = redraw
    section.outputs = [section.kind, section.preset, section.reason, section.size,
                       *(ctx.components[n] for n in CONV_FIELDS), advanced]
