"""One ``--train`` for several ``--data``: the training pairs are embedded once per model and
settings, not once per test set, and the reused vectors are exactly what a fresh embed gives."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from qwembed.eval import models
from qwembed.eval.cli import main
from qwembed.eval.encoding import EmbeddingCache, EncodeStats, encode
from qwembed.eval.hashing_embedder import HashingEmbedder
from qwembed.eval.pairs import run_pairs
from qwembed.eval.pairs_data import load_pairs


class CountingEmbedder(HashingEmbedder):
    """The hashing baseline (deterministic per text and settings), noting every text it embeds
    with the settings it was embedded under."""

    def __init__(self, dimension: int = 32, name: str | None = None):
        super().__init__(dimension, name=name)
        self.embedded: Counter[tuple[str, str | None, str | None]] = Counter()
        self.calls = 0

    def embed(
        self, texts: Sequence[str], *, input_type=None, instruction=None, dimensions=None
    ) -> np.ndarray:
        self.calls += 1
        self.embedded.update((t, input_type, instruction) for t in texts)
        return super().embed(texts, input_type=input_type, instruction=instruction, dimensions=dimensions)

    def texts(self) -> Counter[str]:
        """Times each text was embedded, whatever the settings."""
        counts: Counter[str] = Counter()
        for (text, _, _), n in self.embedded.items():
            counts[text] += n
        return counts


def pair_file(folder: Path, name: str, tag: str, n: int = 40) -> str:
    """``n`` labelled 0/1 pairs whose sentences carry ``tag``, so that no two files share one."""
    path = folder / name
    path.write_text(
        "".join(f"{tag}句子{i}号\t{tag}第{i}个句子\t{i % 2}\n" for i in range(n)), encoding="utf-8"
    )
    return str(path)


@pytest.fixture
def opened(monkeypatch) -> dict[str, CountingEmbedder]:
    """Every ``--model hashing:DIM`` the CLI opens, as a CountingEmbedder, by its spec."""
    seen: dict[str, CountingEmbedder] = {}

    def open_counting(spec: str, **options: object) -> CountingEmbedder:
        seen[spec] = CountingEmbedder(int(spec.partition(":")[2]), name=spec)
        return seen[spec]

    monkeypatch.setattr(models, "open_embedder", open_counting)
    return seen


def run(tmp_path: Path, out: str, *argv: str) -> list[dict]:
    base = ["eval", "pairs", "--quiet", "--shots", "10,all", "--seeds", "2"]
    assert main([*base, *argv, "--out", str(tmp_path / out)]) == 0
    return json.loads((tmp_path / out).read_text(encoding="utf-8"))["records"]


def sentences(path: str) -> set[str]:
    pairs = load_pairs(path)
    return set(pairs.sentence1 + pairs.sentence2)


@pytest.mark.parametrize("train_per_data", [False, True], ids=["one --train", "the same --train per --data"])
def test_one_train_for_two_data_sets_is_embedded_once(tmp_path, opened, train_per_data):
    train = pair_file(tmp_path, "t.train", "甲")
    tests = [pair_file(tmp_path, "a.test", "乙"), pair_file(tmp_path, "b.test", "丙")]
    argv = ["--model", "hashing:32", "--instruction", "找相同的问题"]
    for i, test in enumerate(tests):
        argv += [*(["--train", train] if train_per_data or i == 0 else []), "--data", test]
    both = run(tmp_path, "both.json", *argv)
    model = opened["hashing:32"]
    # every text once (the training sentences were embedded once per --data)
    assert set(model.texts().values()) == {1}
    assert set(model.texts()) == sentences(train) | sentences(tests[0]) | sentences(tests[1])
    assert [r["timing"]["texts_reused"] for r in both] == [0, len(sentences(train))]
    assert [r["timing"]["texts_embedded"] for r in both] == [
        len(sentences(train) | sentences(tests[0])),
        len(sentences(tests[1])),
    ]
    # each record is what the set gives evaluated alone
    for test, record in zip(tests, both, strict=True):
        (alone,) = run(tmp_path, "alone.json", *argv[:4], "--train", train, "--data", test)
        assert (alone["metrics"], alone["details"], alone["dimension"]) == (
            record["metrics"],
            record["details"],
            record["dimension"],
        )


def test_each_model_embeds_the_training_pairs_itself(tmp_path, opened):
    """A cache is one model's: another model (another size here; another precision or device is
    another model object too) never gets its vectors."""
    train = pair_file(tmp_path, "t.train", "甲")
    a, b = pair_file(tmp_path, "a.test", "乙"), pair_file(tmp_path, "b.test", "丙")
    records = run(
        tmp_path,
        "o.json",
        "--model",
        "hashing:32",
        "--model",
        "hashing:16",
        "--train",
        train,
        "--data",
        a,
        "--data",
        b,
    )
    for spec in ("hashing:32", "hashing:16"):
        assert set(opened[spec].texts().values()) == {1}
        assert sentences(train) <= set(opened[spec].texts())
    assert [r["dimension"] for r in records] == [32, 32, 16, 16]


def test_a_test_set_that_is_the_training_set_is_embedded_once(tmp_path, opened):
    data = pair_file(tmp_path, "s.tsv", "甲")
    (record,) = run(tmp_path, "o.json", "--model", "hashing:32", "--train", data, "--data", data)
    assert set(opened["hashing:32"].texts().values()) == {1}
    assert record["timing"]["texts_reused"] == len(sentences(data))


def test_run_pairs_keeps_only_the_training_vectors(tmp_path):
    """Test vectors serve one record; kept, they would pile up over every --data of a model."""
    train = load_pairs(pair_file(tmp_path, "t.train", "甲"))
    test = load_pairs(pair_file(tmp_path, "a.test", "乙"))
    model = CountingEmbedder()
    cache = EmbeddingCache(model)
    run_pairs(model, train, test, shots=[10], seeds=1, progress=False, cache=cache)
    assert len(cache) == len(set(train.sentence1 + train.sentence2))


# ---- the cache itself ------------------------------------------------------------------------
TEXTS = ["甲", "乙", "丙丁", "甲"]


def test_cached_vectors_are_a_fresh_embeds():
    model = CountingEmbedder()
    cache = EmbeddingCache(model)
    stats = EncodeStats()
    first = encode(model, TEXTS[:2], progress=False, cache=cache)
    calls = model.calls
    again = encode(model, TEXTS, progress=False, cache=cache, stats=stats)
    fresh = encode(CountingEmbedder(), TEXTS, progress=False)
    assert np.array_equal(again, fresh) and np.array_equal(first, fresh[:2])
    assert again.dtype == np.float32 and again.shape == (4, 32)
    assert model.calls == calls + 1 and model.embedded[("丙丁", None, None)] == 1  # only the new text
    assert (stats.texts, stats.reused) == (1, 2)
    assert np.array_equal(encode(model, [], progress=False, cache=cache), np.zeros((0, 32), np.float32))


@pytest.mark.parametrize(
    "settings",
    [
        {"input_type": "query"},
        {"input_type": "document"},
        {"input_type": "query", "instruction": "找相同的问题"},
        {"input_type": "query", "instruction": "另一个任务"},
    ],
)
def test_another_setting_is_embedded_anew(settings):
    """``document`` and ``query`` without an instruction give the hashing baseline's plain vectors,
    but not every model's: what the model is asked for differs, so the vectors are not shared."""
    model = CountingEmbedder()
    cache = EmbeddingCache(model)
    plain = encode(model, TEXTS, progress=False, cache=cache)
    encode(model, TEXTS, input_type="query", instruction="找相同的问题", progress=False, cache=cache)
    before = model.embedded.copy()
    vectors = encode(model, TEXTS, progress=False, cache=cache, **settings)
    fresh = encode(CountingEmbedder(), TEXTS, progress=False, **settings)
    assert np.array_equal(vectors, fresh)
    if settings.get("instruction"):
        assert not np.array_equal(vectors, plain)
    key = (settings["input_type"], settings.get("instruction"))
    added = model.embedded - before
    expected = {} if key == ("query", "找相同的问题") else {(t, *key): 1 for t in dict.fromkeys(TEXTS)}
    assert dict(added) == expected  # (the setting already cached is the one not embedded again)


def test_a_cache_serves_its_own_model_only():
    model, other = CountingEmbedder(name="m"), CountingEmbedder(name="m")  # same name, same weights
    cache = EmbeddingCache(model)
    encode(model, TEXTS, progress=False, cache=cache)
    with pytest.raises(ValueError, match="an embedding cache of model 'm' was given 'm'"):
        encode(other, TEXTS, progress=False, cache=cache)
    assert other.calls == 0


def test_remember_false_looks_up_but_keeps_nothing():
    model = CountingEmbedder()
    cache = EmbeddingCache(model)
    encode(model, TEXTS[:1], progress=False, cache=cache)
    encode(model, TEXTS, progress=False, cache=cache, remember=False)
    assert len(cache) == 1 and model.embedded[("甲", None, None)] == 1
