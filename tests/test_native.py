"""Our C kernels' common ground: built once per source and compiler, in the cache, and only
accepted on torch's own OpenMP threads."""

from __future__ import annotations

import pytest
import torch

from qwembed.backends import cpu_attention, native


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler")
def test_a_library_is_built_once_per_source_and_compiler(tmp_path):
    compiler = native.compiler()
    try:
        first = native.build(cpu_attention.SOURCE, cpu_attention.AMX_FLAGS, compiler, tmp_path)
    except RuntimeError as error:  # an old compiler without AMX intrinsics
        pytest.skip(f"this compiler cannot build the kernel: {error}")
    built = first.stat().st_mtime_ns
    assert native.build(cpu_attention.SOURCE, cpu_attention.AMX_FLAGS, compiler, tmp_path) == first
    assert first.stat().st_mtime_ns == built
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no build leftovers
    other = native.build(cpu_attention.SOURCE, (*cpu_attention.AMX_FLAGS, "-DOTHER"), compiler, tmp_path)
    assert other != first  # other flags, another library


def test_a_library_on_another_openmp_runtime_is_refused():
    """Its thread count would not follow torch.set_num_threads: a second pool of threads."""
    assert native.shares_torchs_threads(torch.get_num_threads)
    assert not native.shares_torchs_threads(lambda: 64)


def test_an_unwritable_cache_builds_in_the_temp_dir(monkeypatch, tmp_path):
    calls = []

    def build(source, flags, compiler, directory):
        calls.append(directory)
        if len(calls) == 1:
            raise PermissionError("read-only")
        return directory / "built.so"

    monkeypatch.setattr(native, "build", build)
    assert native.build_cached(cpu_attention.SOURCE, (), "cc").name == "built.so"
    assert calls[0] == native.cache_dir() and calls[1].name == "qwembed-kernels"
