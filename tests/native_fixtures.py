"""Shared by the tests of our C kernels (``backends/native.py``): each test file loads its kernel
once to learn whether it serves here, every test starts and ends with a fresh load state, and a
counting stand-in shows that a model's forward really went through a kernel."""

from __future__ import annotations

import logging

import pytest

from qwembed.backends.native import Loader


def loaded_or_reason(loader: Loader):
    """The kernel as it loads on this machine, and why not where it does not (for skip reasons)."""
    loader.reset()
    kernel = loader.get()
    reason = loader.unavailable_reason() or "it failed to build or check (see the log)"
    loader.reset()
    return kernel, reason


def fresh_state(loader: Loader):
    """An autouse fixture that forgets ``loader``'s kernel before and after each test."""

    @pytest.fixture(autouse=True)
    def fresh():
        loader.reset()
        yield
        loader.reset()

    return fresh


def assert_a_failed_check_falls_back(loader: Loader, logger: str, monkeypatch, caplog) -> None:
    """A kernel whose load-time check fails is not served, and its log says why."""
    monkeypatch.setattr(loader, "check", lambda kernel: float("inf"))
    with caplog.at_level(logging.WARNING, logger=logger):
        assert loader.get() is None
    assert "is off by" in caplog.text


class Counting:
    """Stands in for a loaded kernel (``Loader.set``): passes every call on to ``kernel``, and
    records each call of one of ``methods`` in :attr:`calls` as (name, keyword arguments)."""

    def __init__(self, kernel, *methods: str):
        self.kernel, self.methods = kernel, methods
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name: str):
        found = getattr(self.kernel, name)
        if name not in self.methods:
            return found

        def record(*args, **kwargs):
            self.calls.append((name, kwargs))
            return found(*args, **kwargs)

        return record

    def count(self, name: str) -> int:
        return sum(called == name for called, _ in self.calls)
