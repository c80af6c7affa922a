"""Any sentence-transformers model (BGE-M3 dense, e5, MiniLM …) with its own pooling and prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

from .base import InputType, TokenIds
from .device import resolve_device, sentence_transformers_options, transformers_model
from .framing import framing_of
from .packed_bert import packed_bert_forward, supports_packing
from .packing import PackedBatch, filled_to_bucket
from .padding import pad_token_ids
from .precision import DEFAULT_MIN_COSINE, Precision
from .torch_encoder import TorchEncoder

# Prompt names that models use for the document side (e5 says "passage").
_DOCUMENT_PROMPTS = ("document", "passage", "doc", "corpus")


class SentenceTransformerEncoder(TorchEncoder):
    backend = "sentence-transformers"

    def __init__(self, model: SentenceTransformer, *, name: str, source: str, max_tokens: int | None = None):
        tokenizer = model.tokenizer
        limit = int(model.max_seq_length or tokenizer.model_max_length)
        super().__init__(
            name=name,
            source=source,
            dimension=int(model.get_embedding_dimension()),
            max_tokens=min(max_tokens or limit, limit),
            vocab_size=len(tokenizer),
        )
        self.model = model
        self.tokenizer = tokenizer
        self.framing = framing_of(tokenizer)
        self.device = model.device
        self._needs_token_types = "token_type_ids" in tokenizer.model_input_names
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_left = tokenizer.padding_side == "left"
        #: padding-free forward for BERT and XLM-R / RoBERTa models (see backends/packed_bert.py)
        self.packed = supports_packing(self.compile_target())

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
        compile: bool = False,
        min_bf16_cosine: float = DEFAULT_MIN_COSINE,
    ) -> SentenceTransformerEncoder:
        dev = resolve_device(device)
        precision = Precision.plan(dtype, dev)
        options = sentence_transformers_options(
            device=dev, dtype=precision.load_dtype, trust_remote_code=trust_remote_code
        )
        model = SentenceTransformer(name_or_path, **options).eval()
        encoder = cls(model, name=name or name_or_path, source=name_or_path, max_tokens=max_tokens)
        encoder.prepare(model, precision, compile=compile, min_bf16_cosine=min_bf16_cosine)
        return encoder

    def compile_target(self) -> torch.nn.Module:
        # The transformer inside sentence-transformers' first module; pooling stays eager (it is cheap).
        return transformers_model(self.model)

    def _prompt(self, input_type: InputType | None, instruction: str | None) -> str:
        prompts = self.model.prompts or {}
        if input_type == "document":
            return next((prompts[k] for k in _DOCUMENT_PROMPTS if k in prompts), "")
        if instruction is not None:
            return instruction  # models without an instruction template take it verbatim, as ST's prompt=
        if input_type == "query":
            return prompts.get("query", "")
        default = self.model.default_prompt_name
        return prompts.get(default, "") if default else ""

    def format(self, text: str, input_type: InputType | None, instruction: str | None) -> str:
        return self._prompt(input_type, instruction) + text

    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        return self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]

    @torch.inference_mode()
    def pool_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """The model's own modules up to its pooled vector (Pooling, and any Dense after it), not
        its trailing ``Normalize``: what sentence-transformers' Pooling module outputs for MiniLM."""
        if self.packed:
            return self._pool_packed(batch)
        shape = self.padded_shape(batch)
        input_ids, mask = pad_token_ids(batch, self.pad_id, left=self.pad_left, shape=shape)
        features = {"input_ids": input_ids, "attention_mask": mask}
        if self._needs_token_types:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        features = {key: value.to(self.device) for key, value in features.items()}
        with self.precision.autocast():
            # (SentenceTransformer.forward is these modules in turn, passing no keyword arguments)
            for module in (self.model[0], *self.pooling_modules):
                features = module(features)
        return _numpy(features["sentence_embedding"][: len(batch)])

    def _pool_packed(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """BERT without padding in its Linear layers (backends/packed_bert.py), then the model's
        own pooling modules: on the packed tokens where sentence-transformers' pooling reads them
        so (its unpadded-attention input), else on the padded view."""
        filled = filled_to_bucket(batch, self.pad_id, self.max_tokens, self.device)
        rows, longest = self.padded_shape(filled)
        packed = PackedBatch.of(filled, rows, longest).to(self.device)
        with self.precision.autocast():
            in_packed_order = False
            if self._pools_first_tokens():
                # the final layer runs for each text's [CLS] alone, in the caller's order (the
                # caller's rows only: the filler's come after them); pooling then reads sequences
                # of one token each
                first_tokens = packed.first_token[: len(batch)]
                first = packed_bert_forward(self.compile_target(), packed, rows=first_tokens)
                one_each = torch.arange(len(batch) + 1, device=first.device)
                features = {"token_embeddings": first[None], "cu_seq_lens_q": one_each}
            elif self._pools_packed_tokens():
                hidden = packed_bert_forward(self.compile_target(), packed)
                features = {"token_embeddings": hidden[None], "cu_seq_lens_q": packed.bounds}
                in_packed_order = True
            else:
                hidden = packed_bert_forward(self.compile_target(), packed)
                features = {"token_embeddings": packed.pad(hidden), "attention_mask": packed.mask()}
            for module in self.pooling_modules:
                features = module(features)
        pooled = features["sentence_embedding"]
        # (the caller's rows first: filler rows and a compiled model's extra rows come after them)
        return _numpy((packed.in_caller_order(pooled) if in_packed_order else pooled)[: len(batch)])

    @property
    def pooling_modules(self) -> list[torch.nn.Module]:
        """The modules after the transformer up to the pooled vector: a trailing ``Normalize`` left
        out (``pool_token_ids`` gives the vector before it). Read per batch, as the model's own
        list (a caller may swap a module)."""
        modules = list(self.model)[1:]
        while modules and isinstance(modules[-1], Normalize):
            modules.pop()
        return modules

    def _pools_first_tokens(self) -> bool:
        """Pooling on packed tokens that reads each text's first token only (CLS pooling: BGE,
        BGE-M3): the packed forward then needs the final layer at those tokens alone."""
        # (one mode is a string: a tuple holds several)
        return self._pools_packed_tokens() and self.model[1].pooling_mode == "cls"

    def _pools_packed_tokens(self) -> bool:
        """Pooling (sentence-transformers ≥ 6 reduces packed tokens by sequence bounds, which saves
        padding and masking every batch), then only modules that read the pooled vector."""
        after = list(self.model)[1:]
        return (
            bool(after)
            and isinstance(after[0], Pooling)
            and hasattr(after[0], "_forward_flattened")
            and all(isinstance(module, (Pooling, Normalize, Dense)) for module in after)
        )


def _numpy(pooled: torch.Tensor) -> np.ndarray:
    # (contiguous: a view of the padded batch would keep all of it alive with the vectors)
    return pooled.float().contiguous().cpu().numpy()
