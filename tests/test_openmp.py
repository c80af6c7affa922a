"""A thread's idle OpenMP workers are handed back: after a stream's lone window on every core, and
by the thread that adds a model to the pool (where it loaded), so that the process never
holds more OpenMP workers than it has CPUs while a lone window runs (``engine/openmp.py``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fake_encoders import SlowEncoder
from qwembed.engine import openmp
from qwembed.engine.pool import ModelPool
from qwembed.engine.streams import Streams
from thread_helpers import in_a_new_thread

TASKS = Path("/proc/self/task")

pytestmark = pytest.mark.skipif(not TASKS.is_dir(), reason="counts threads through Linux's /proc/self/task")


def _tasks() -> set[str]:
    return set(os.listdir(TASKS))


def _parallel_work() -> None:
    """An operator torch runs on its OpenMP threads (a reduction over 4M values: many grains)."""
    torch.ones(4 * 2**20).sum()


def _workers_started_by(work: Callable[[], None]) -> set[str]:
    before = _tasks()
    work()
    return _tasks() - before


@pytest.fixture(autouse=True)
def _runtime_can_pause():
    if not openmp.release_thread_pool():
        pytest.skip("this OpenMP runtime has no omp_pause_resource_all")


def test_a_thread_hands_back_the_workers_its_parallel_work_started():
    def body() -> None:
        torch.set_num_threads(2)
        workers = _workers_started_by(_parallel_work)
        assert workers, "a two-thread region started no OpenMP worker"
        assert openmp.release_thread_pool()
        assert not workers & _tasks()
        _parallel_work()  # and it can run on every core again

    in_a_new_thread(body)


def test_a_stream_on_one_thread_hands_back_its_workers_after_a_window_on_every_core():
    streams = Streams(count=2, threads=1, every_core_tokens=1)

    def body() -> None:
        streams.enter()
        workers: set[str] = set()
        with streams.every_core():
            assert torch.get_num_threads() == 2
            workers = _workers_started_by(_parallel_work)
        assert workers and not workers & _tasks()
        assert torch.get_num_threads() == 1

    in_a_new_thread(body)


def test_a_stream_on_several_threads_starts_its_own_workers_again_after_a_window_on_every_core():
    streams = Streams(count=2, threads=2, every_core_tokens=1)

    def body() -> None:
        streams.enter()
        with streams.every_core():
            workers = _workers_started_by(_parallel_work)
        assert workers and not workers & _tasks()
        assert len(_workers_started_by(_parallel_work)) == 1  # its own two threads' worth
        openmp.release_thread_pool()

    in_a_new_thread(body)


def test_the_thread_that_adds_a_model_to_the_pool_hands_back_the_workers_its_loading_started():
    pool = ModelPool()

    def body() -> None:
        torch.set_num_threads(2)
        workers = _workers_started_by(_parallel_work)  # as a model's load-time checks do
        pool.add_encoder(SlowEncoder(delay=0))
        assert workers and not workers & _tasks()

    in_a_new_thread(body)
