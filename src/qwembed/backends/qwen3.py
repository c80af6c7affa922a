"""Qwen3-Embedding: left padding, ``<|endoftext|>`` last, last-token pooling (L2 normalisation
after it, in ``Encoder.embed_token_ids`` or per request in the engine).

This follows the model card's reference procedure, and fixes the two places where serving stacks
usually go wrong: the end token is appended exactly once whether or not the tokenizer's
post-processor adds it (the official tokenizer does; many copies of the files do not), and the
query instruction uses the exact official form ``Instruct: {task}\\nQuery:{text}``.

The instruction's tokens are named in the encoder's ``PrefixCache`` as queries are formatted, so
that after the first batch the packed forward reads their attention inputs instead of computing
them again (``prefix_cache.py``): a lone query runs its own few tokens only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from .base import InputType, TokenIds
from .device import load_transformers_model, resolve_device
from .framing import Framing
from .fused_pointwise import fuse_in_background
from .packed_qwen3 import packed_qwen3_pooled, supports_packing
from .packing import PackedBatch
from .padding import pad_token_ids, positions_from_mask
from .precision import DEFAULT_MIN_COSINE, Precision
from .prefix_cache import PrefixCache, TemplatePrefixes
from .qwen3_pointwise import EAGER, Pointwise
from .torch_encoder import TorchEncoder

END_OF_TEXT = "<|endoftext|>"
DEFAULT_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def query_prompt(task: str, text: str) -> str:
    """The official query form: note there is no space after ``Query:``."""
    return f"Instruct: {task}\nQuery:{text}"


class Qwen3Encoder(TorchEncoder):
    backend = "qwen3"
    #: the packed forward's norms, RoPE and gating: eager, or single compiled kernels on a GPU
    pointwise: Pointwise = EAGER
    #: the thread compiling the fused kernels (``fused_pointwise.py``) while the eager steps serve;
    #: None where they do not apply
    fusing: threading.Thread | None = None
    #: the instructions' attention inputs, kept between batches; set once ``load`` has settled the
    #: precision (the load-time check compares precisions, so it must compute every token in each)
    prefix_cache: PrefixCache | None = None

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        source: str,
        max_tokens: int | None = None,
        default_task: str = DEFAULT_QUERY_TASK,
    ):
        config = model.config
        limit = int(getattr(config, "max_position_embeddings", 32768))
        super().__init__(
            name=name,
            source=source,
            dimension=int(config.hidden_size),
            max_tokens=min(max_tokens or limit, limit),
            vocab_size=max(int(config.vocab_size), len(tokenizer)),
        )
        self.model = model
        self.tokenizer = tokenizer
        self.default_task = default_task
        self.end_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        self.framing = Framing(suffix=(self.end_id,))
        self.device = next(model.parameters()).device
        #: padding-free forward (backends/packed_qwen3.py); ``--compile`` applies only without it
        #: (sliding-window layers): the compiled padded forward measured 1.2× slower than the packed
        #: eager one on 512-token documents and 1.8× slower on short texts (docs/benchmarks.md)
        self.packed = supports_packing(model)
        #: the tokens an instruction's queries begin with: the prompt's but its last (``:``), which
        #: merges with some texts' first characters (``:-``, ``:'``, a newline)
        self.instruction_prefix = TemplatePrefixes(
            lambda task, text: tokenizer(query_prompt(task, text), add_special_tokens=False)["input_ids"]
        )

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
    ) -> Qwen3Encoder:
        dev = resolve_device(device)
        precision = Precision.plan(dtype, dev)
        model, tokenizer = load_transformers_model(
            AutoModel,
            name_or_path,
            device=dev,
            dtype=precision.load_dtype,
            trust_remote_code=trust_remote_code,
        )
        encoder = cls(model, tokenizer, name=name or name_or_path, source=name_or_path, max_tokens=max_tokens)
        encoder.prepare(model, precision, compile=compile, min_bf16_cosine=min_bf16_cosine)
        if encoder.packed:
            encoder.prefix_cache = PrefixCache()
            encoder.fusing = fuse_in_background(model, encoder.name, encoder.use_pointwise)
        return encoder

    def use_pointwise(self, steps: Pointwise) -> None:
        """Run the packed forward's element-wise steps with ``steps`` from the next batch on."""
        self.pointwise = steps

    def format(self, text: str, input_type: InputType | None, instruction: str | None) -> str:
        if input_type == "document":
            return text
        if instruction is not None or input_type == "query":
            task = self.default_task if instruction is None else instruction
            if self.prefix_cache is not None:
                self.prefix_cache.remember(self.instruction_prefix(task))
            return query_prompt(task, text)
        return text

    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        # The recipe is the text's tokens, then <|endoftext|>: appended here rather than by the
        # tokenizer file, whose post-processor may or may not add it. (Fitting the tokenizer's
        # output instead took a text's own trailing "<|endoftext|>" for the appended one.)
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [[*ids, self.end_id] for ids in encoded]

    @torch.inference_mode()
    def pool_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """The final hidden state (after the model's last norm) at each sequence's last token, the
        end token: the model card's pooling, before its L2 normalisation."""
        if self.packed:
            with self.precision.autocast():
                pooled = packed_qwen3_pooled(
                    self.model,
                    PackedBatch.of(list(batch), *self.padded_shape(batch), causal=True),
                    self.pointwise,
                    self.prefix_cache,
                )
            return pooled.float().contiguous().cpu().numpy()
        # left padding: every sequence ends in the last column, where it is pooled
        input_ids, mask = pad_token_ids(batch, self.pad_id, left=True, shape=self.padded_shape(batch))
        positions = positions_from_mask(mask)
        with self.precision.autocast():
            hidden = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
            ).last_hidden_state
        # (contiguous: a view would keep the whole batch's hidden states alive with the vectors)
        return hidden[: len(batch), -1].float().contiguous().cpu().numpy()
