"""FLOPs of one call (forward and backward) split over named parts of a model.

Operators are counted with the formulas of `torch.utils.flop_counter`. Each one is charged to
a part: in the forward pass to the part whose module is running (forward hooks on every
module under the part's name prefixes); in the backward pass to the part whose forward
created the autograd node now running (recorded by a function mode as the forward runs, so a
frozen encoder's backward, which computes no weight gradients, is charged what it really
costs). Operators outside every part (the cost volume, the loss, the optimizer) fall into
`REST`, so the parts always add up to the total.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

REST = "loss and the rest"

# Parts of the CAT-Seg family (CAT-Seg, H-CLIP, InfoCLIP): module-name prefixes relative to the model.
CATSEG_PARTS: dict[str, tuple[str, ...]] = {
    "image encoder": ("dense.clip.visual",),
    "text encoder": ("dense.clip.transformer", "dense.clip.token_embedding", "dense.clip.ln_final"),
    "aggregation": ("decoder.layers", "decoder.cost_embed", "decoder.appearance_guidance", "decoder.text_guidance"),
    "upsampling decoder": ("decoder.upsampler",),
    "teacher (frozen)": ("teacher",),
}


@dataclass(frozen=True)
class PartFlops:
    total: int
    parts: dict[str, int]  # every requested part, in its order, then REST

    def share(self, part: str) -> float:
        return self.parts[part] / self.total if self.total else 0.0


def _part_of(name: str, parts: Mapping[str, Sequence[str]]) -> str | None:
    for part, prefixes in parts.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return part
    return None


class _Attribution:
    """The part running now: a stack in the forward pass, the creating part of autograd nodes in the backward."""

    def __init__(self) -> None:
        self.stack: list[str] = [REST]
        self.node_part: dict = {}  # autograd nodes are not weak-referenceable; dropped after the call

    def current(self) -> str:
        node = torch._C._current_autograd_node()
        if node is None:
            return self.stack[-1]
        return self.node_part.get(node, REST)

    def record(self, outputs) -> None:
        """Charge the autograd nodes a call just created (those not yet seen) to the part running it."""
        part = self.current()
        pending = [t.grad_fn for t in tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        while pending:
            node = pending.pop()
            if node is None or node in self.node_part:
                continue
            self.node_part[node] = part
            pending.extend(next_node for next_node, _ in node.next_functions)


class _RecordNodes(TorchFunctionMode):
    def __init__(self, attribution: _Attribution) -> None:
        super().__init__()
        self.attribution = attribution

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.is_grad_enabled():
            self.attribution.record(out)
        return out


def _cpu_flash(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _cpu_flash_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


# torch's table lacks the CPU flash-attention kernels that scaled_dot_product_attention picks on a CPU
_FORMULAS = {**flop_registry,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward}


class _CountFlops(TorchDispatchMode):
    def __init__(self, attribution: _Attribution, counts: dict[str, int]) -> None:
        super().__init__()
        self.attribution = attribution
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FORMULAS.get(func._overloadpacket)
        if formula is not None:
            part = self.attribution.current()
            self.counts[part] = self.counts.get(part, 0) + int(formula(*args, **kwargs, out_val=out))
        return out


def _enter(stack: list[str], part: str, *_) -> None:
    stack.append(part)


def _leave(stack: list[str], *_) -> None:  # a forward hook's return value would replace the module's output
    stack.pop()


def count_part_flops(model: torch.nn.Module, call: Callable[[], object],
                     parts: Mapping[str, Sequence[str]] = CATSEG_PARTS) -> PartFlops:
    """Run `call` (which runs `model`, forward and, if it trains, backward) once, counting FLOPs per part."""
    attribution = _Attribution()
    hooks = []
    for name, module in model.named_modules():
        part = _part_of(name, parts)
        if part is not None:
            hooks.append(module.register_forward_pre_hook(functools.partial(_enter, attribution.stack, part)))
            hooks.append(module.register_forward_hook(functools.partial(_leave, attribution.stack), always_call=True))
    counts: dict[str, int] = {}
    try:
        with _RecordNodes(attribution), _CountFlops(attribution, counts):
            call()
    finally:
        for hook in hooks:
            hook.remove()
    result = {part: counts.get(part, 0) for part in parts}
    result[REST] = counts.get(REST, 0)
    return PartFlops(total=sum(result.values()), parts=result)
