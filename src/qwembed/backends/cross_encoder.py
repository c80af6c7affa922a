"""Classic cross-encoder rerankers (BGE reranker, ms-marco MiniLM …) through sentence-transformers.

The model reads ``[CLS] query [SEP] document [SEP]`` (or its RoBERTa form) and one logit comes out;
the score is that logit passed through the activation the model declares (sigmoid unless its
config says otherwise), i.e. exactly what ``CrossEncoder.predict`` returns.

Pairs travel as plain token-id lists through the engine, so the segment ids BERT-like models
need are rebuilt from the ids: everything after the first ``[SEP]`` is the document.

A plain BERT or XLM-R / RoBERTa sequence classifier (ms-marco MiniLM, the BGE rerankers) runs the
padding-free forward (``packed_bert.py``, with its CPU kernels) and then its classification head on
one row per pair: for BERT 1.1× the padded forward in float32 and 2.0× in mixed bf16 on an AMX CPU
(docs/benchmarks.md). The head reads each pair's first token only, so the forward's final layer
runs past its attention for those tokens alone (1.13× on a 6-layer MiniLM). Any other model goes
through sentence-transformers' modules, padded.

Precision is the embedders' (``precision.py``): bf16 on CUDA; under ``--dtype auto`` on CPUs with
bf16 units, mixed bf16 (1.6–1.8× on AMX) if no calibration pair's score, as a probability, moves by
more than 0.01 from float32 at load, float32 otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from .base import PairTooLongError, PromptTooLongError, Reranker, TokenIds
from .device import resolve_device, sentence_transformers_options, transformers_model
from .packed_bert import packed_bert_forward, supports_packing
from .packing import PackedBatch, filled_to_bucket
from .padding import pad_token_ids
from .precision import (
    FLOAT32_CPU,
    CalibrationResult,
    Precision,
    apply_checked_precision,
    calibration_probabilities,
    score_check,
)
from .token_caps import cut_after_tokens

# Tokenizers without a real limit report a huge sentinel as model_max_length.
_NO_LIMIT = 1_000_000


#: the head of a sequence classifier that reads each pair's first-token state: its logits from them
FirstTokenHead = Callable[[torch.Tensor], torch.Tensor]


def _first_token_head(model: CrossEncoder) -> FirstTokenHead | None:
    """Where the CrossEncoder's only module is a plain BERT or RoBERTa sequence classifier (what
    ``_packed_logits`` runs the packed forward for), its head as a function of the first-token
    states: BERT's pooler (dense + tanh) and one Linear layer, RoBERTa's dense + tanh + projection.
    None for anything else."""
    try:
        classifier = transformers_model(model)
    except AttributeError:  # a first module that holds no transformer
        return None
    if len(model) != 1 or not supports_packing(classifier.base_model):
        return None
    kind, head = type(classifier).__name__, classifier.classifier
    if kind == "BertForSequenceClassification":
        pooler = getattr(classifier.bert, "pooler", None)
        if pooler is None or not isinstance(head, torch.nn.Linear):
            return None
        return lambda first: head(pooler.activation(pooler.dense(first)))
    if kind not in ("RobertaForSequenceClassification", "XLMRobertaForSequenceClassification"):
        return None
    if not all(isinstance(getattr(head, part, None), torch.nn.Linear) for part in ("dense", "out_proj")):
        return None
    return lambda first: head(first[:, None])  # it takes (rows, tokens, hidden) and reads token 0


def _model_limit(model: CrossEncoder) -> int:
    """The longest pair the model accepts: the tokenizer's limit, else the position table's."""
    declared = model.max_seq_length or model.tokenizer.model_max_length
    if declared and declared < _NO_LIMIT:
        return int(declared)
    config = model.config
    positions = int(getattr(config, "max_position_embeddings", 512))
    # RoBERTa-style models number positions from padding_idx + 1, which costs two table rows.
    if "roberta" in str(getattr(config, "model_type", "")):
        positions -= 2
    return positions


class CrossEncoderReranker(Reranker):
    backend = "cross-encoder"
    #: as for the embedders (``precision.py``): mixed bf16 on CPUs with bf16 units, checked at load
    precision: Precision = FLOAT32_CPU
    calibration: CalibrationResult | None = None

    def __init__(self, model: CrossEncoder, *, name: str, source: str, max_tokens: int | None = None):
        if model.num_labels != 1:
            raise ValueError(
                f"{source} has {model.num_labels} output labels; a reranker needs exactly one relevance score"
            )
        first = model[0]
        if getattr(first, "transformer_task", "sequence-classification") != "sequence-classification":
            raise ValueError(
                f"{source} is a causal LM, not a sequence classifier; "
                "serve Qwen3 rerankers with Qwen3Reranker"
            )
        limit = _model_limit(model)
        super().__init__(name=name, source=source, max_tokens=min(max_tokens or limit, limit))
        self.model = model
        self.tokenizer = model.tokenizer
        self.device = model.device
        self.activation = model.activation_fn
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.pad_left = self.tokenizer.padding_side == "left"
        self._sep_id = self.tokenizer.sep_token_id
        self._needs_token_types = (
            "token_type_ids" in self.tokenizer.model_input_names and self._sep_id is not None
        )
        #: the padding-free forward (packed_bert.py) where the model is a plain BERT or RoBERTa
        #: sequence classifier and nothing else: its head then runs on one row per pair
        self._head = _first_token_head(model)
        self.packed = self._head is not None

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        name: str | None = None,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_tokens: int | None = None,
        trust_remote_code: bool = False,
    ) -> CrossEncoderReranker:
        dev = resolve_device(device)
        precision = Precision.plan(dtype, dev)
        options = sentence_transformers_options(
            device=dev, dtype=precision.load_dtype, trust_remote_code=trust_remote_code
        )
        model = CrossEncoder(name_or_path, **options).eval()
        reranker = cls(model, name=name or name_or_path, source=name_or_path, max_tokens=max_tokens)
        # mixed bf16 only where no calibration pair's probability moves by more than 0.01
        reranker.calibration = apply_checked_precision(
            reranker, model, precision, lambda: calibration_probabilities(reranker), score_check()
        )
        return reranker

    def tokenize_pairs(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None,
        truncate: bool = True,
        max_tokens: int | None = None,
    ) -> list[TokenIds]:
        # Classic cross-encoders have no instruction slot; an instruction is ignored, as
        # CrossEncoder.predict would ignore it.
        if not documents:
            return []
        limit = self.pair_limit(max_tokens)
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        if limit < specials + 2:  # not one token each of query and document
            raise PromptTooLongError(
                specials,
                limit,
                instruction=False,
                room_for="the query and document",
                capped=limit < self.max_tokens,
            )
        # An over-long pair loses tokens from the longer of query and document until it fits, as in
        # CrossEncoder.predict (and TEI): a query up to half the limit stays whole, and a long one
        # leaves the document half the room (cutting only the document, as this did before, left a
        # 508-token query one token of document in 512).
        encoded = self.tokenizer(
            [query] * len(documents),
            list(documents),
            truncation="longest_first" if truncate else False,
            max_length=limit,
            verbose=False,
        )["input_ids"]
        for index, ids in enumerate(encoded):
            if len(ids) > limit:  # (only where truncation was not allowed)
                raise PairTooLongError(len(ids), limit, index)
        return encoded

    def cut_texts(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        return cut_after_tokens(self.tokenizer, texts, max_tokens)

    def _token_types(self, ids: TokenIds) -> list[int]:
        # Segment A runs up to and including the first [SEP]; the rest (document, final [SEP]) is B.
        try:
            cut = ids.index(self._sep_id) + 1
        except ValueError:
            cut = len(ids)
        return [0] * cut + [1] * (len(ids) - cut)

    @torch.inference_mode()
    def logits_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        if not batch:
            return np.zeros(0, dtype=np.float32)
        scores = self._packed_logits(batch) if self.packed else self._padded_logits(batch)
        return scores.reshape(len(batch)).cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def activate(self, logits: np.ndarray) -> np.ndarray:
        """The activation ``CrossEncoder.predict`` applies (sigmoid for one label by default)."""
        logits = np.asarray(logits, dtype=np.float32)
        if self.activation is None:
            return logits
        return self.activation(torch.from_numpy(logits)).numpy().astype(np.float32, copy=False)

    def _packed_logits(self, batch: Sequence[TokenIds]) -> torch.Tensor:
        """The sequence classifier's logits from the packed forward: the transformer on real tokens
        only, then the classification head on each pair's first token ([CLS] or <s>)."""
        classifier = transformers_model(self.model)
        filled = filled_to_bucket(batch, self.pad_id, self.max_tokens, self.device)
        packed = PackedBatch.of(filled, len(filled), max(len(ids) for ids in filled))
        types = None
        if self._needs_token_types:  # in packed order, like the tokens
            rows = packed.order.tolist()
            types = torch.tensor([t for row in rows for t in self._token_types(list(filled[row]))])
        with self.precision.autocast():
            # the head reads the first token only, so the final layer runs for it alone (and for
            # the caller's rows alone: the filler's come after them)
            first = packed_bert_forward(
                classifier.base_model, packed, types, rows=packed.first_token[: len(batch)]
            )
            return self._head(first).float()

    def _padded_logits(self, batch: Sequence[TokenIds]) -> torch.Tensor:
        input_ids, mask = pad_token_ids(batch, self.pad_id, left=self.pad_left)
        features = {"input_ids": input_ids, "attention_mask": mask}
        if self._needs_token_types:
            types = [self._token_types(list(ids)) for ids in batch]
            features["token_type_ids"] = pad_token_ids(types, 0, left=self.pad_left)[0]
        features = {key: value.to(self.device) for key, value in features.items()}
        # Going through the CrossEncoder's modules (not the bare HF model) keeps any extra heads
        # a model defines; the activation is the one predict() applies.
        with self.precision.autocast():
            return self.model({**features, "modality": "text"})["scores"].float()
