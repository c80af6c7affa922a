"""Shared by the tests of our C kernels (``backends/native.py``): each test file loads its kernel
once to learn whether it serves here, and every test starts and ends with a fresh load state."""

from __future__ import annotations

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
