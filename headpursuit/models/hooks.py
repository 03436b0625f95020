"""The forward pre-hooks headpursuit puts on a model, recorded so that the library can ask which are
live without reading torch's private hook dicts (`module._forward_pre_hooks`).

    handle = add_pre_hook(lm.o_proj(3), hook)   # module.register_forward_pre_hook(hook), recorded
    live_hooks(lm.model)                        # [hook, ...]: the recorded hooks on its modules
    handle.remove()                             # off the module and out of the record

The head edits (`headpursuit.intervention.scale_heads`) register this way: `edits_active(lm)`
asks whether an edit is on, and the greedy loop (`headpursuit.models.greedy`) finds the hooks
whose per-row state must follow the rows of its batch.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["HookHandle", "add_pre_hook", "live_hooks"]

#: module -> {registration number: hook} of the live hooks registered through `add_pre_hook`
_LIVE: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, Callable[..., Any]]] = weakref.WeakKeyDictionary()
_NUMBERS = itertools.count()


class HookHandle:
    """Removes one hook added by `add_pre_hook`: from the module and from the record (idempotent)."""

    def __init__(self, module: torch.nn.Module, number: int, handle: torch.utils.hooks.RemovableHandle):
        self._module = weakref.ref(module)
        self._number = number
        self._handle = handle

    def remove(self) -> None:
        self._handle.remove()
        module = self._module()
        if module is not None:
            hooks = _LIVE.get(module, {})
            hooks.pop(self._number, None)
            if not hooks:
                _LIVE.pop(module, None)


def add_pre_hook(module: torch.nn.Module, hook: Callable[..., Any], *, with_kwargs: bool = False) -> HookHandle:
    """`module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)`, recorded until the
    returned handle's `remove()` (`with_kwargs`: the hook also sees the forward's keyword arguments)."""
    number = next(_NUMBERS)
    handle = module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)
    _LIVE.setdefault(module, {})[number] = hook
    return HookHandle(module, number, handle)


def live_hooks(model: torch.nn.Module) -> list[Callable[..., Any]]:
    """The hooks registered through `add_pre_hook` and not yet removed on `model` or any of its
    submodules, in module order, then registration order."""
    return [hook for module in model.modules() for _, hook in sorted(_LIVE.get(module, {}).items())]
