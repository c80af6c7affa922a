"""Running a test's code on a fresh thread: torch's thread count and an OpenMP pool are per thread."""

from __future__ import annotations

import threading
from collections.abc import Callable


def in_a_new_thread(work: Callable[[], object]) -> None:
    """Run ``work`` on a thread of its own and wait for it, re-raising its failure here."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
