"""The mteb adapter, run by mteb itself on two tiny in-memory tasks (mteb's own data sets
come from the Hugging Face hub, which tests never reach)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from qwembed.eval.hashing_embedder import HashingEmbedder
from qwembed.eval.mteb_adapter import QwembedMTEBModel, mteb_model

mteb = pytest.importorskip("mteb", reason="mteb is not installed (pip install mteb)")

from datasets import Dataset, DatasetDict  # noqa: E402  (installed with mteb)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.sts import AbsTaskSTS  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.types import PromptType  # noqa: E402

# TaskMetadata's required descriptive fields; none of them affects the evaluation.
_METADATA = {
    "description": "A tiny in-memory task for qwembed's tests.",
    "reference": "https://example.org/qwembed",
    "dataset": {"path": "qwembed/none", "revision": "0"},
    "category": "t2t",
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "date": ("2024-01-01", "2024-01-01"),
    "dialect": [],
    "domains": [],
    "task_subtypes": [],
    "license": "cc-by-4.0",
    "annotations_creators": "derived",
    "modalities": ["text"],
    "sample_creation": "created",
    "bibtex_citation": "",
}
QUERY_PROMPT = "Given a question, retrieve the passage that answers it"


class TinyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(
        name="QwembedTinyRetrieval",
        type="Retrieval",
        main_score="ndcg_at_10",
        prompt={"query": QUERY_PROMPT},
        **_METADATA,
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        queries = [{"id": "q1", "text": "capital of france"}, {"id": "q2", "text": "largest planet"}]
        corpus = [
            {"id": "d1", "title": "", "text": "Paris is the capital of France"},
            {"id": "d2", "title": "Jupiter", "text": "the largest planet"},
            {"id": "d3", "title": "", "text": "bananas are yellow"},
        ]
        split = {
            "queries": Dataset.from_list(queries),
            "corpus": Dataset.from_list(corpus),
            "relevant_docs": {"q1": {"d1": 1}, "q2": {"d2": 1}},
            "top_ranked": None,
        }
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class TinySTS(AbsTaskSTS):
    metadata = TaskMetadata(name="QwembedTinySTS", type="STS", main_score="cosine_spearman", **_METADATA)
    min_score = 0
    max_score = 5

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        pairs = {
            "sentence1": ["a cat sits", "a dog runs", "it rains", "a red car"],
            "sentence2": ["a cat is sitting", "stocks fell", "it is raining", "a blue car"],
            "score": [5.0, 0.0, 4.5, 2.0],
        }
        self.dataset = DatasetDict({"test": Dataset.from_dict(pairs)})
        self.data_loaded = True


class RecordingEmbedder(HashingEmbedder):
    """The hashing baseline, remembering how each text was asked for."""

    def __init__(self) -> None:
        super().__init__(name="recording")
        self.calls: list[tuple[str, str | None, str | None]] = []

    def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: Any = None,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        self.calls.extend((t, input_type, instruction) for t in texts)
        return super().embed(texts, input_type=input_type, instruction=instruction, dimensions=dimensions)


def evaluate(model: QwembedMTEBModel) -> dict[str, float]:
    # cache=None: nothing is read from or written to ~/.cache/mteb
    result = mteb.evaluate(model, [TinyRetrieval(), TinySTS()], cache=None, show_progress_bar=False)
    assert not result.exceptions
    return {r.task_name: r.get_score() for r in result.task_results}


def test_mteb_scores_a_qwembed_model_spec() -> None:
    model = mteb_model("hashing:128")
    assert isinstance(model, mteb.models.EncoderProtocol)
    assert model.mteb_model_meta.name == "qwembed/hashing_128"
    scores = evaluate(model)
    # character overlap alone finds both answers, and ranks the STS pairs roughly right
    assert scores["QwembedTinyRetrieval"] == 1.0
    assert 0.5 < scores["QwembedTinySTS"] <= 1.0


def test_prompt_types_become_input_type_and_instruction() -> None:
    recorder = RecordingEmbedder()
    evaluate(QwembedMTEBModel(recorder))
    asked = {text: (input_type, instruction) for text, input_type, instruction in recorder.calls}
    assert asked["capital of france"] == ("query", QUERY_PROMPT)
    # documents: mteb's "title text", and never an instruction
    assert asked["Jupiter the largest planet"] == ("document", None)
    assert asked["bananas are yellow"] == ("document", None)
    # a symmetric task: both sides as queries with mteb's default instruction for STS
    sts = AbsTaskSTS.abstask_prompt
    assert asked["a cat sits"] == asked["a cat is sitting"] == ("query", sts)


def test_user_instructions_override_the_tasks() -> None:
    retrieval, sts = TinyRetrieval.metadata, TinySTS.metadata
    model = QwembedMTEBModel(
        HashingEmbedder(), instructions={"QwembedTinyRetrieval-query": "mine", "STS": ""}
    )
    assert model.embedding_options(retrieval, PromptType.query) == ("query", "mine")
    assert model.embedding_options(retrieval, PromptType.document) == ("document", None)
    assert model.embedding_options(sts, None) == (None, None)  # "" switches the instruction off

    plain = QwembedMTEBModel(HashingEmbedder(), task_instructions=False)
    # no instruction: the model's own default query prompt applies
    assert plain.embedding_options(retrieval, PromptType.query) == ("query", None)
    assert plain.embedding_options(sts, None) == (None, None)


def test_encode_with_dimensions_gives_unit_prefixes() -> None:
    full, short = QwembedMTEBModel(HashingEmbedder(64)), QwembedMTEBModel(HashingEmbedder(64), dimensions=16)
    batches = [{"text": ["a cat sits", "a dog runs"]}, {"text": ["a cat sits"]}]
    kwargs = {"task_metadata": TinySTS.metadata, "hf_split": "test", "hf_subset": "default"}
    a, b = full.encode(batches, **kwargs), short.encode(batches, **kwargs)
    assert a.shape == (3, 64) and b.shape == (3, 16) and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(b[0], a[0, :16] / np.linalg.norm(a[0, :16]), rtol=1e-5)
    assert short.mteb_model_meta.embed_dim == 16
