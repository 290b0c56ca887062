"""Making the process's locks and threads usable again in a child after ``os.fork()``."""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None: ...


_AWARE: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_in_child(obj: ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked from now on."""
    _AWARE.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_AWARE):
        obj.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
