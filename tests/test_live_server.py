"""A real server on 127.0.0.1, spoken to by the official openai client and by the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from qwembed.api import create_app
from qwembed.backends import LoadOptions, load_encoder
from qwembed.engine import Embedder
from qwembed.engine.pool import ModelPool
from server_fixtures import running_server

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")

TEXTS = ["What is Matryoshka representation learning?", "俄罗斯套娃表示学习", "🙂 mixed 中文 text"]


@pytest.fixture(scope="module")
def server(qwen3_dirs):
    pool = ModelPool()
    pool.add_encoder(
        load_encoder(
            str(qwen3_dirs["plain"]), name="qwen3-tiny", options=LoadOptions(device="cpu", dtype="float32")
        )
    )
    pool.add_encoder(load_encoder("minilm", options=LoadOptions(device="cpu", dtype="float32")))
    with running_server(create_app(pool)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def test_openai_client_float_and_base64_agree(client, qwen3_dirs):
    # the client asks for base64 by default and decodes it itself
    default = client.embeddings.create(model="qwen3-tiny", input=TEXTS)
    floats = client.embeddings.create(model="qwen3-tiny", input=TEXTS, encoding_format="float")
    a = np.array([d.embedding for d in default.data], dtype=np.float32)
    b = np.array([d.embedding for d in floats.data], dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    local = Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32").embed(TEXTS)
    np.testing.assert_allclose(a, local, atol=1e-5)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > len(TEXTS)


def test_openai_client_dimensions_and_extensions(client):
    response = client.embeddings.create(
        model="qwen3-tiny", input=["q"], dimensions=32, extra_body={"input_type": "query"}
    )
    assert len(response.data[0].embedding) == 32
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(model="qwen3-tiny", input=["q"], dimensions=65)
    assert error.value.body["code"] == "invalid_dimensions"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input=["q"])
    assert {m.id for m in client.models.list().data} == {"qwen3-tiny", "minilm"}


def test_cli_library_and_server_agree(client, qwen3_dirs, tmp_path):
    """The same text gives the same vector through all three doors."""
    out = tmp_path / "vectors.npy"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qwembed.cli",
            "embed",
            "--model",
            str(qwen3_dirs["plain"]),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--input-type",
            "query",
            "--out",
            str(out),
            *TEXTS,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    from_cli = np.load(out)
    from_library = Embedder.load(str(qwen3_dirs["plain"]), device="cpu", dtype="float32").embed(
        TEXTS, input_type="query"
    )
    served = client.embeddings.create(model="qwen3-tiny", input=TEXTS, extra_body={"input_type": "query"})
    from_server = np.array([d.embedding for d in served.data], dtype=np.float32)
    np.testing.assert_allclose(from_cli, from_library, atol=1e-6)
    np.testing.assert_allclose(from_server, from_library, atol=1e-6)


def test_cli_jsonl_output_and_errors(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("first line\nsecond line\n", encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwembed.cli",
            "embed",
            "--model",
            "minilm",
            "--file",
            str(texts),
            "--dimensions",
            "8",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["first line", "second line"]
    assert all(len(r["embedding"]) == 8 for r in rows)
    failed = subprocess.run(
        [
            *(sys.executable, "-m", "qwembed.cli", "--log-level", "warning"),
            *("embed", "--model", "minilm", "--dimensions", "999", "x"),
        ],
        capture_output=True,
        timeout=300,
        text=True,
    )
    assert failed.returncode == 2 and "between 1 and 384" in failed.stderr
    assert "Loading weights" not in failed.stderr  # (no progress bars below info)
