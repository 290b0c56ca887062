"""Adds a ``SegmentIntegration`` to every Sentry client made in this Python process.

Used by ``peer/run_sentry_python_tests.py`` for the run of sentry-python's own tests "with the
integration": that run puts this folder on ``PYTHONPATH`` and sets
``SENTRY_SEGMENT_EVERYWHERE=1``, so the pytest process and every Python subprocess a test starts
(``tests/test_client.py::test_atexit`` runs one) load it. Without the variable it does nothing.

The one point changed is ``sentry_sdk.client._Client.__init__`` (``sentry_sdk.Client`` is that
class: ``sentry_sdk.init`` and the ``sentry_init`` fixture of sentry-python's conftest both build
their client with it): the wrapper appends
``SegmentIntegration(write_key="peer_test_key", host="http://127.0.0.1:9")`` (port 9 is closed:
nothing is ever delivered) to the ``integrations`` option, given as a keyword or in an options
mapping, then calls the original ``__init__`` unchanged (so the warnings sentry-sdk emits while
reading options still point at its own code). A client unpickled (``__setstate__``) keeps the
options it was pickled with, the integration included. No test of sentry-python is edited.

Nothing here imports ``sentry_sdk`` early: sentry-python's ``tests/__init__.py`` asserts that
``sentry_sdk`` is not imported before it. An import hook waits for ``sentry_sdk.client`` to be
executed by whoever imports it first, then wraps ``__init__``; ``sentry_segment_integration`` is
imported at the first client's construction, when ``sentry_sdk`` is fully imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping

ENV_FLAG = "SENTRY_SEGMENT_EVERYWHERE"
WRITE_KEY = "peer_test_key"
HOST = "http://127.0.0.1:9"
_TARGET = "sentry_sdk.client"
# How many clients' options got the integration in this process, and the sum of every such
# integration's counters (forwarded, skipped_no_user...): read by the outcomes plugin, to show
# that the integration saw the tests' events, not only that it was there.
clients_given_the_integration = 0
integration_counters: dict = {}


def _count_too(integration_class) -> None:
    if getattr(integration_class.count, "_segment_everywhere", False):
        return
    original_count = integration_class.count

    @functools.wraps(original_count)
    def count(self, counter, amount=1):
        original_count(self, counter, amount)
        integration_counters[counter] = integration_counters.get(counter, 0) + amount

    count._segment_everywhere = True  # type: ignore[attr-defined]
    integration_class.count = count


def _integrations_given(args: tuple, kwargs: dict):
    if "integrations" in kwargs:
        return kwargs["integrations"]
    # sentry_sdk.Client(dsn, {"integrations": [...]}) or Client({...}): options in a mapping.
    for arg in args:
        if isinstance(arg, Mapping) and "integrations" in arg:
            return arg["integrations"]
    return None


def patch_client_module(module) -> None:
    client_class = module._Client
    original_init = client_class.__init__
    if getattr(original_init, "_segment_everywhere", False):
        return

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        global clients_given_the_integration
        from sentry_segment_integration import SegmentIntegration

        _count_too(SegmentIntegration)
        integration = SegmentIntegration(write_key=WRITE_KEY, host=HOST)
        # A new list, never the caller's (nor sentry-sdk's shared default) edited in place.
        kwargs["integrations"] = [*(_integrations_given(args, kwargs) or ()), integration]
        clients_given_the_integration += 1
        original_init(self, *args, **kwargs)

    __init__._segment_everywhere = True  # type: ignore[attr-defined]
    client_class.__init__ = __init__


class _PatchAfterExec(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        patch_client_module(module)

    def __getattr__(self, name):  # get_resource_reader, get_filename, ...
        return getattr(self._loader, name)


class _ClientModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchAfterExec(spec.loader)
        return spec


def install() -> None:
    if _TARGET in sys.modules:
        patch_client_module(sys.modules[_TARGET])
    elif not any(isinstance(finder, _ClientModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ClientModuleFinder())


def _chain_to_shadowed_sitecustomize() -> None:
    """Run the sitecustomize this one hides on sys.path, if the interpreter has one."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get(ENV_FLAG) == "1":
    install()

with contextlib.suppress(Exception):
    _chain_to_shadowed_sitecustomize()
