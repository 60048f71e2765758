"""What a training step costs the host: the ATen ops it dispatches and the times it waits for the device.

At batch 1 on a fast GPU the step is bound by the CPU dispatching thousands of small ops, and by any host
synchronisation (``.item()``, ``bool(tensor)``, a blocking copy to the CPU), which drains the GPU's queue. Both are
counted the same way on any machine, so a CPU can check what a GPU would suffer: ops with the profiler (the ATen
calls a step enters from Python or from compiled code: a compiled graph's fused kernels are not among them), syncs
with a dispatch mode. Under a dispatch mode dynamo runs compiled frames eagerly, so the sync count is the Python
step's; a compiled graph cannot hold a sync anyway without a graph break, and the compiled step has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def optimizer_step_counters(optimizer) -> set[int]:
    """Storage addresses of the optimizer's per-parameter step counters that live on the CPU: torch's optimizers
    read them with ``.item()`` on purpose (a CPU scalar never waits for the device), so they are not syncs."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    found = set()
    for state in inner.state.values():
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, torch.Tensor) and step.device.type == "cpu":
            found.add(step.untyped_storage().data_ptr())
    return found


def _on_accelerator(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device.type not in ("cpu", "meta")


@dataclass
class StepCounter(TorchDispatchMode):
    """Counts every op that reaches the dispatcher and every host synchronisation among them: a scalar read
    (``aten._local_scalar_dense``: ``.item()``, ``bool()``, ``.tolist()``) of any tensor but the ``ignored``
    optimizer counters, and a blocking copy from an accelerator to the CPU."""

    ignored: set[int] = field(default_factory=set)
    ops: int = 0
    syncs: int = 0
    sync_sites: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if self._is_sync(func, args, kwargs):
            self.syncs += 1
            self.sync_sites.append(str(func))
        return func(*args, **kwargs)

    def _is_sync(self, func, args, kwargs) -> bool:
        if func is aten._local_scalar_dense.default:
            return args[0].untyped_storage().data_ptr() not in self.ignored
        if kwargs.get("non_blocking"):
            return False
        if func is aten._to_copy.default:
            device = kwargs.get("device")
            return _on_accelerator(args[0]) and device is not None and torch.device(device).type == "cpu"
        if func is aten.copy_.default:
            blocking = not (len(args) > 2 and args[2])
            return blocking and _on_accelerator(args[1]) and args[0].device.type == "cpu"
        return False


def dispatched_ops(step, steps: int = 3) -> float:
    """ATen ops entered per step from outside ATen (an op's own inner ATen calls are not counted again)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    outer = [e for e in prof.events() if e.name.startswith("aten::")
             and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(outer) / steps
