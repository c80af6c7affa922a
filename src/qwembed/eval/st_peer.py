"""``st:MODEL`` — sentence-transformers' own ``encode`` as a peer to compare qwembed against.

The same model through the library most users start from, in float32 with its defaults (batches of
32), so ``qwembed bench --model st:minilm --model minilm`` puts the peer and qwembed side by side.

Qwen3-Embedding is the one family where sentence-transformers' defaults are wrong for a folder
without its own sentence-transformers config (``modules.json``), such as a checkpoint saved by
transformers: sentence-transformers 6 would wrap each text in the tokenizer's chat template and
mean-pool. Such a folder gets the configuration the official Qwen3-Embedding repositories ship
(:func:`qwen3_sentence_transformer`), and an instruction gets the official query form, as it does
in qwembed; otherwise the two would not be measuring the same thing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..engine.postprocess import truncate_dimensions
from .protocol import InputType

PREFIX = "st:"

# (qwembed's backends, and with them torch, are imported where used: every evaluation imports this
# module, the hashing baseline's and an endpoint's included, which need neither)

log = logging.getLogger(__name__)


def qwen3_sentence_transformer(
    folder: str | Path, hidden: int | None = None, dtype=None, device: str = "cpu"
):
    """A Qwen3 embedding checkpoint as the official sentence-transformers config sets it up:
    last-token pooling, left padding, normalisation, plain text (no chat template) and the query
    prompt. ``dtype`` loads the weights in it, as ``model_kwargs={"dtype": …}`` does; a later
    ``.to(dtype)`` would also round the rotary frequencies (``inv_freq``, float32 in the model) to
    bf16 and shift every position's angle, lowering the cosine to float32 of a 36-layer model from
    0.999 to 0.99."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from ..backends.qwen3 import DEFAULT_QUERY_TASK, query_prompt

    if hidden is None:
        hidden = int(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    transformer = Transformer(
        str(folder),
        model_kwargs={} if dtype is None else {"dtype": dtype},
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
        processor_kwargs={"padding_side": "left"},
    )
    return SentenceTransformer(
        modules=[transformer, Pooling(hidden, pooling_mode="lasttoken"), Normalize()],
        device=device,
        prompts={"query": query_prompt(DEFAULT_QUERY_TASK, ""), "document": ""},
    )


def _is_qwen3(source: str) -> bool:
    config = Path(source) / "config.json"
    if not config.is_file():  # a hub id: its model type is known once loaded
        return False
    return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "qwen3"


class SentenceTransformersPeer:
    def __init__(self, model: str, *, device: str = "auto"):
        from sentence_transformers import SentenceTransformer

        from ..backends.registry import bundled_minilm_path

        source = str(bundled_minilm_path()) if model == "minilm" else model
        self.name = PREFIX + model
        st_device = None if device == "auto" else device
        if _is_qwen3(source) and not (Path(source) / "modules.json").is_file():
            log.warning(
                "%s has no sentence-transformers config (modules.json): the peer uses the official "
                "Qwen3-Embedding one (last-token pooling, no chat template)",
                source,
            )
            self.model = qwen3_sentence_transformer(source, device=st_device)
        else:
            self.model = SentenceTransformer(source, device=st_device)
        transformer_config = getattr(self.model[0], "auto_model", None)
        self.qwen3 = getattr(getattr(transformer_config, "config", None), "model_type", None) == "qwen3"
        if self.qwen3:
            self._warn_without_end_token(source)

    def _warn_without_end_token(self, source: str) -> None:
        from ..backends.qwen3 import END_OF_TEXT

        tokenizer = self.model.tokenizer
        end_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        if tokenizer("probe")["input_ids"][-1:] != [end_id]:
            log.warning(
                "%s: its tokenizer does not append %s as the official Qwen3-Embedding tokenizer "
                "does; sentence-transformers' vectors will differ from the model card's (qwembed "
                "appends it itself)",
                source,
                END_OF_TEXT,
            )

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def compute(self) -> str:
        return f"{str(self.model.dtype).removeprefix('torch.')} on {self.model.device.type}"

    def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        kwargs: dict = {}
        if instruction is not None and input_type != "document":
            # Qwen3 reads an instruction in its official query form, as qwembed sends it; other
            # models take it as a prefix, as sentence-transformers' ``prompt`` does
            from ..backends.qwen3 import query_prompt

            kwargs = {"prompt": query_prompt(instruction, "") if self.qwen3 else instruction}
        elif input_type in (self.model.prompts or {}):
            kwargs = {"prompt_name": input_type}
        vectors = self.model.encode(list(texts), normalize_embeddings=True, **kwargs)
        return truncate_dimensions(np.asarray(vectors, dtype=np.float32), dimensions)
