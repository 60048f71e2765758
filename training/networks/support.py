"""What this trainer cannot build as a NetworkSpec asks, said before any model loads (torch-free: preflight calls
it)."""

from __future__ import annotations

from training.contract.network import NetworkSpec


def refusals(spec: NetworkSpec, network_dropout: float) -> list[str]:
    """Settings this spec cannot train as asked, one line each (the run stops before loading a model)."""
    out = []
    if spec.use_tucker and spec.algo == "lora" and spec.has_conv:
        out.append("network_args use_tucker=True: peft's LoCon has no Tucker-decomposed conv; use algo=loha or "
                   "algo=lokr for Tucker, or remove use_tucker")
    if spec.algo != "lora" and (spec.dropout or network_dropout):
        out.append(f"network_dropout/dropout: {spec.kind} has no neuron dropout (LyCORIS ignores it too); set it to "
                   f"0 and use rank_dropout or module_dropout")
    if spec.dora_wd and (spec.rank_dropout or spec.module_dropout or spec.dropout or network_dropout):
        out.append("dora_wd=True: DoRA here trains without network_dropout, rank_dropout and module_dropout; set "
                   "them to 0")
    if spec.dora_wd and not spec.wd_on_output:
        out.append("network_args wd_on_output=False: peft's DoRA normalises each output row only; remove it")
    return out
