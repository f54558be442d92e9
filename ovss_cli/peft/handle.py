"""FinetuneHandle: what apply_finetune attached to a CLIP model, and how to refresh or fold it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from ovss_cli.errors import UsageError

# modes whose changes cannot be written into open_clip's plain weights
UNMERGEABLE = {"vpt": "adds prompt tokens", "adapter": "adds bottleneck layers"}
MARKER = "_ovss_finetune_mode"


@dataclass
class Attachment:
    """Everything one mode added to the model, so that the handle can refresh and undo it."""

    parametrized: list[tuple[nn.Module, str]] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)
    added_modules: list[tuple[nn.Module, str]] = field(default_factory=list)
    refreshers: list[Callable[[], None]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class FinetuneHandle:
    """Controls the fine-tuning attached to `model` by `apply_finetune`.

    - `refresh()` must run at the start of every forward pass (H-CLIP builds all layers'
      transforms there, once, batched); cheap no-op for the other modes.
    - `scope()` is a context manager for one forward: refresh + parametrization caching, so a
      weight read several times during the pass is transformed once.
    - `merge()` folds everything into plain open_clip weights (not possible for vpt, adapter).
    """

    def __init__(self, model: nn.Module, mode: str, attachment: Attachment, clip_parameters: int):
        self.model = model
        self.mode = mode
        self.clip_parameters = clip_parameters  # parameters of the plain CLIP, before adaptation
        self._attachment = attachment
        self._merged = False

    @property
    def mergeable(self) -> bool:
        return self.mode not in UNMERGEABLE

    @property
    def merged(self) -> bool:
        return self._merged

    def refresh(self) -> None:
        if not self._merged:
            for refresh in self._attachment.refreshers:
                refresh()

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        self.refresh()
        with parametrize.cached():
            yield

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def summary(self) -> dict[str, Any]:
        trainable = self.trainable_parameter_count()
        return {
            "mode": self.mode,
            "trainable": trainable,
            "clip_parameters": self.clip_parameters,
            "trainable_percent_of_clip": round(100.0 * trainable / max(self.clip_parameters, 1), 3),
            "mergeable": self.mergeable,
            **self._attachment.details,
        }

    def merge(self) -> None:
        """Fold the adaptation into the CLIP weights and remove every parametrization and module added.

        Afterwards `model.state_dict()` has exactly open_clip's keys. Parameters keep their
        current requires_grad flags.
        """
        if not self.mergeable:
            raise UsageError(
                f"finetune mode '{self.mode}' {UNMERGEABLE[self.mode]} and cannot be folded into plain CLIP "
                "weights; keep the adapted model's checkpoint instead"
            )
        if self._merged:
            return

        with torch.no_grad():
            self.refresh()
            for module, name in self._attachment.parametrized:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        for hook in self._attachment.hooks:
            hook.remove()
        for parent, name in self._attachment.added_modules:
            delattr(parent, name)
        self.model.__dict__.pop(MARKER, None)
        self._merged = True
