"""Run the ``mteb`` benchmark on any qwembed model or endpoint.

``QwembedMTEBModel`` implements mteb's encoder protocol (``mteb.models.EncoderProtocol``,
mteb 2.x) on top of a :class:`~qwembed.eval.protocol.TextEmbedder`, so a local model, a
qwembed server and the hashing baseline are all scored by mteb's own tasks and metrics::

    import mteb
    from qwembed.eval.mteb_adapter import mteb_model

    model = mteb_model("Qwen/Qwen3-Embedding-0.6B")   # or "http://host:8000/v1#qwen3"
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))

mteb's prompt types map onto qwembed's ``input_type`` / ``instruction``:

* ``PromptType.document`` → ``input_type="document"``, never an instruction;
* ``PromptType.query`` → ``input_type="query"`` with the task's instruction;
* no prompt type (symmetric tasks: STS, classification, clustering …) → embedded as a query
  with the task's instruction when there is one, as Qwen3-Embedding was evaluated, else as
  plain text.

mteb is imported only inside the methods that need it: importing it takes seconds and
qwembed must work without it installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .encoding import DEFAULT_BATCH_SIZE, encode, normalize_rows
from .models import open_embedder
from .protocol import InputType, TextEmbedder

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType

__all__ = ["QwembedMTEBModel", "mteb_model"]


class QwembedMTEBModel:
    """An mteb encoder backed by a qwembed ``TextEmbedder``.

    ``instructions`` overrides the query instructions mteb's tasks define. Keys follow mteb's
    own prompt-dictionary convention, most specific first: ``"<TaskName>-query"``,
    ``"<TaskName>"``, ``"<TaskType>-query"`` (e.g. ``"Retrieval-query"``), ``"<TaskType>"``,
    ``"query"``. An empty string means "no task instruction" (a query then gets the model's
    own default instruction, a symmetric task's text none).

    ``task_instructions=False`` ignores the instructions mteb's tasks carry and uses only
    ``instructions``: for models that were not trained with instructions (minilm, USE), to
    which an instruction is just extra text that lowers their scores.

    ``dimensions`` evaluates a Matryoshka prefix of the vectors (the engine's ``dimensions=``).
    """

    def __init__(
        self,
        embedder: TextEmbedder,
        *,
        instructions: Mapping[str, str] | None = None,
        task_instructions: bool = True,
        dimensions: int | None = None,
    ) -> None:
        if dimensions is not None and dimensions <= 0:
            raise ValueError(f"dimensions must be a positive integer, got {dimensions}")
        self.model = embedder
        self.instructions = dict(instructions or {})
        self.task_instructions = task_instructions
        self.dimensions = dimensions
        self._meta: ModelMeta | None = None

    # -- mteb's EncoderProtocol ------------------------------------------------------------

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every text of mteb's DataLoader; float32 ``(n, d)`` unit rows.

        mteb has already shaped the batches' ``text``: a document is ``title + " " + text``,
        a conversation is flattened, and a per-query instruction column (instruction-retrieval
        tasks) is appended to its query — the same text every mteb model receives.
        """
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(
                    f"{task_metadata.name}: qwembed models embed text only; the batch has {sorted(batch)}"
                )
            texts.extend(batch["text"])
        input_type, instruction = self.embedding_options(task_metadata, prompt_type)
        kind = prompt_type.value if prompt_type is not None else "text"
        vectors = encode(
            self.model,
            texts,
            input_type=input_type,
            instruction=instruction,
            batch_size=int(kwargs.get("batch_size") or DEFAULT_BATCH_SIZE),
            desc=f"{task_metadata.name} {kind}",
            progress=bool(kwargs.get("show_progress_bar", True)),
        )
        if self.dimensions and self.dimensions < vectors.shape[1]:
            # the engine's Matryoshka truncation, done here so that every kind of model
            # (endpoints and the hashing baseline included) can be evaluated at a smaller size
            vectors = normalize_rows(vectors[:, : self.dimensions])
        return vectors

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Cosine matrix (rows are unit vectors, so this is the dot product), via mteb so that
        its evaluators get the array type they expect."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    @property
    def mteb_model_meta(self) -> ModelMeta:
        """What mteb records about the model; the name also names mteb's result-cache folder."""
        if self._meta is None:
            from mteb.models.model_meta import ModelMeta

            experiment = {"dimensions": self.dimensions} if self.dimensions else None
            self._meta = ModelMeta.create_empty(
                overwrites={
                    # mteb requires "organisation/model"; a spec such as an endpoint URL is
                    # reduced to characters that are safe in a folder name
                    "name": "qwembed/" + re.sub(r"[^\w.-]+", "_", self.model.name).strip("_"),
                    "embed_dim": min(self.dimensions or self.model.dimension, self.model.dimension),
                    "similarity_fn_name": "cosine",
                    "use_instructions": True,
                    "framework": ["NumPy"],
                    "experiment_kwargs": experiment,
                }
            )
        return self._meta

    # -- prompt type → qwembed options -----------------------------------------------------

    def embedding_options(
        self, task_metadata: TaskMetadata, prompt_type: PromptType | None
    ) -> tuple[InputType | None, str | None]:
        """``(input_type, instruction)`` for the texts of one ``encode`` call."""
        side = prompt_type.value if prompt_type is not None else None
        if side == "document":
            return "document", None
        instruction = self.instruction_for(task_metadata, prompt_type)
        if side == "query":
            return "query", instruction
        # symmetric task: both sides alike, as queries only when there is an instruction to give
        return ("query", instruction) if instruction else (None, None)

    def instruction_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The query instruction for a task: the user's mapping, else the task's own prompt,
        else the default mteb gives every task of that type; ``None`` for documents."""
        side = prompt_type.value if prompt_type is not None else None
        if side == "document":
            return None
        name, kind = task_metadata.name, str(task_metadata.type)
        keys = [f"{name}-{side}", name, f"{kind}-{side}", kind, side] if side else [name, kind]
        for key in keys:
            if key in self.instructions:
                return self.instructions[key] or None
        if not self.task_instructions:
            return None
        prompt = task_metadata.prompt
        if isinstance(prompt, Mapping):
            prompt = prompt.get("query")
        if prompt:
            return str(prompt)
        from mteb.abstasks.abstask import get_abstask_prompt

        return get_abstask_prompt(name) or None


def mteb_model(
    spec: str,
    *,
    instructions: Mapping[str, str] | None = None,
    task_instructions: bool = True,
    dimensions: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
) -> QwembedMTEBModel:
    """The mteb encoder for a ``--model`` spec: ``minilm``, a folder, a hub id,
    ``http(s)://host/v1#MODEL`` or ``hashing[:DIM]`` (see :func:`qwembed.eval.models.open_embedder`)."""
    embedder = open_embedder(spec, device=device, dtype=dtype, batch_size=batch_size)
    return QwembedMTEBModel(
        embedder, instructions=instructions, task_instructions=task_instructions, dimensions=dimensions
    )
