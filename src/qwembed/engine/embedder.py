"""The library entry point: ``Embedder.load("minilm").embed(["text", …])``.

Used directly by scripts, evaluation and the knowledge base; the server runs the same
tokenisation and batching through :class:`~qwembed.engine.worker.BatchWorker`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..backends import Encoder, InputType, LoadOptions, TokenIds, load_encoder
from ..backends.framing import TruncationSide
from ..backends.precision import DEFAULT_MIN_COSINE
from ..backends.registry import BackendName
from .batching import check_sizes, default_batch_size, default_batch_tokens, plan_batches
from .inputs import EmbedOptions, text_list, tokenize_ids, tokenize_texts
from .postprocess import check_dimensions, check_normalize, embedding_forward, finish
from .streams import StreamExecutor, Streams


class Embedder:
    """One embedding model and its batching: ``embed`` texts, or ``embed_token_ids``. Safe to share
    between threads (each call plans its own batches; the forward passes share the streams)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        streams: int | None = None,
    ):
        check_sizes(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size)
        self.encoder = encoder
        #: the defaults depend on the encoder's device (engine/batching.py)
        self.max_batch_tokens = max_batch_tokens or default_batch_tokens(encoder)
        self.max_batch_size = max_batch_size or default_batch_size(encoder)
        #: forward passes at once (engine/streams.py); None: two on a multi-core CPU, one on a GPU
        self.streams = StreamExecutor(Streams.for_model(encoder, streams))

    @classmethod
    def load(
        cls,
        model: str,
        *,
        name: str | None = None,
        backend: BackendName = "auto",
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_tokens: int | None = None,
        trust_remote_code: bool = False,
        compile: bool = False,
        min_bf16_cosine: float = DEFAULT_MIN_COSINE,
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        streams: int | None = None,
    ) -> Embedder:
        """``dtype="auto"``: bf16 on CUDA and on CPUs with bf16 matrix units (checked against float32
        at load, fallback below ``min_bf16_cosine``), float32 elsewhere; ``compile``: torch.compile the
        forward pass (faster batches, slower start)."""
        options = LoadOptions(
            device, dtype, max_tokens, trust_remote_code, compile=compile, min_bf16_cosine=min_bf16_cosine
        )
        encoder = load_encoder(model, name=name, backend=backend, options=options)
        return cls(encoder, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, streams=streams)

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    @property
    def max_tokens(self) -> int:
        return self.encoder.max_tokens

    @property
    def compute(self) -> str:
        """What the model computes in, and where: ``"bfloat16 matmuls, float32 elsewhere on cpu"``."""
        return self.encoder.compute

    def tokenize(
        self,
        texts: Iterable[str],
        *,
        input_type: InputType | None = None,
        instruction: str | None = None,
        truncate: bool = False,
        max_tokens: int | None = None,
        truncation_side: TruncationSide = "right",
    ) -> list[TokenIds]:
        """The exact token ids the model sees for each text: prompt and special tokens included,
        cut to the model's limit only with ``truncate`` (else ``InputTooLongError``), and to
        ``max_tokens`` where that is given and smaller; ``truncation_side="left"`` cuts a text's
        beginning instead of its end, the prompt kept."""
        options = EmbedOptions(input_type, instruction, truncate, max_tokens, truncation_side)
        return tokenize_texts(self.encoder, text_list(texts), options)

    def embed_token_ids(
        self, batch: Sequence[TokenIds], *, truncate: bool = False, normalize: bool = True
    ) -> np.ndarray:
        """Embed already-tokenised inputs, a list of token-id lists (the model's end token is
        added where missing); ``normalize`` as for ``embed``."""
        if batch and not isinstance(batch[0], Sequence):
            raise TypeError("batch must be a list of token-id lists: wrap one input's ids as [ids]")
        check_normalize(self.encoder, normalize)
        ids = tokenize_ids(self.encoder, batch, EmbedOptions(truncate=truncate))
        return finish(self._run(ids), normalize=normalize, pooled=self.encoder.has_pooled_vectors)

    def embed(
        self,
        texts: str | Iterable[str],
        *,
        input_type: InputType | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = False,
        max_tokens: int | None = None,
        normalize: bool = True,
        truncation_side: TruncationSide = "right",
    ) -> np.ndarray:
        """float32 unit vectors, one row per text (a 1-D vector for a single string; ``(0, dim)``
        for no texts); with ``normalize=False`` the model's pooled vectors as they are (TEI's
        ``normalize: false``; ``NormalizeUnsupportedError`` for a model that gives unit vectors only).

        ``input_type``: ``"query"`` gets the model's query prompt (Qwen3: the instruction),
        ``"document"`` never one, None the text as given unless ``instruction`` is set.
        ``dimensions``: keep the first N components, then normalise (Matryoshka). ``truncate``:
        cut over-long texts instead of raising ``InputTooLongError``. ``max_tokens``: cut every
        text to at most N tokens, prompt and special tokens included (a cut asked for, so with or
        without ``truncate``). ``truncation_side="left"``: a cut removes the text's beginning, not its
        end (for inputs whose end matters most, such as a conversation's latest turns)."""
        single = isinstance(texts, str)
        check_dimensions(dimensions, self.dimension)
        check_normalize(self.encoder, normalize)
        ids = self.tokenize(
            [texts] if single else texts,
            input_type=input_type,
            instruction=instruction,
            truncate=truncate,
            max_tokens=max_tokens,
            truncation_side=truncation_side,
        )
        pooled = self.encoder.has_pooled_vectors
        vectors = finish(self._run(ids), dimensions, normalize=normalize, pooled=pooled)
        return vectors[0] if single else vectors

    def _run(self, ids: list[TokenIds]) -> np.ndarray:
        """What the model's forward passes give for ``ids`` (``postprocess.embedding_forward``: pooled
        vectors, not yet normalised), in a new array of the caller's own."""
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        if not ids:
            return out
        lengths = [len(x) for x in ids]
        padded = not self.encoder.packed
        streams = self.streams.streams.count
        batches = plan_batches(
            lengths, self.max_batch_tokens, self.max_batch_size, padded=padded, streams=streams
        )

        run = embedding_forward(self.encoder)

        def embed(batch: list[int]) -> np.ndarray:
            return run([ids[i] for i in batch])

        for batch, vectors in zip(batches, self.streams.map(embed, batches), strict=True):
            out[batch] = vectors
        return out
