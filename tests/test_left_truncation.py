"""Left truncation (TEI's ``truncation_direction: Left``; the library's ``truncation_side="left"``):
an over-long text loses its beginning, and the model's prompt and special tokens are kept whole,
as a right cut keeps them. The expected ids are built here from the tokenizer's own output."""

from __future__ import annotations

import numpy as np
import pytest

from qwembed.backends.framing import Framing
from qwembed.engine import Embedder
from qwembed.engine.inputs import EmbedOptions

LONG = " ".join(f"word{i}" for i in range(400)) + " the very end"


def test_framing_cuts_either_side_and_keeps_the_head():
    framing = Framing(prefix=(1,), suffix=(2,))
    ids = [1, 10, 11, 20, 21, 22, 23, 2]  # 10, 11: a prompt; 20-23: the text
    assert framing.truncate(ids, 6) == [1, 10, 11, 20, 21, 2]
    assert framing.truncate(ids, 6, side="left") == [1, 20, 21, 22, 23, 2]  # (no head: the content's end)
    assert framing.truncate(ids, 6, side="left", head=[10, 11]) == [1, 10, 11, 22, 23, 2]
    assert framing.truncate(ids, 8, side="left", head=[10, 11]) == ids  # fits: nothing cut
    assert framing.truncate(ids, 4, side="left", head=[10, 11]) == [
        1,
        10,
        11,
        2,
    ]  # the engine refuses this case


def test_an_unknown_side_is_refused():
    with pytest.raises(ValueError, match="truncation_side must be 'right' or 'left'"):
        EmbedOptions(truncate=True, truncation_side="Left")


@pytest.fixture(scope="module")
def qwen3(qwen3_dirs) -> Embedder:
    return Embedder.load(str(qwen3_dirs["appends"]), dtype="float32")


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> Embedder:
    return Embedder.load(str(minilm_dir), dtype="float32")


def test_bert_keeps_cls_the_last_tokens_and_sep(minilm):
    full = minilm.encoder.tokenize([LONG])[0]  # (the encoder's: never cut)
    (cut,) = minilm.tokenize([LONG], truncate=True, truncation_side="left")
    limit = minilm.max_tokens
    assert cut == [full[0], *full[len(full) - limit + 1 :]]
    np.testing.assert_allclose(
        minilm.embed(LONG, truncate=True, truncation_side="left"),
        minilm.embed_token_ids([cut])[0],
        atol=1e-6,
    )


def test_qwen3_keeps_the_instruction_the_last_tokens_and_the_end_token(qwen3):
    encoder = qwen3.encoder
    instruction = "Find the passage that ends the same way"
    cap = 64
    full = encoder.tokenize([encoder.format(LONG, "query", instruction)])[0]  # (never cut)
    prompt = len(encoder.prompt_ids("query", instruction))
    (cut,) = qwen3.tokenize(
        [LONG], input_type="query", instruction=instruction, max_tokens=cap, truncation_side="left"
    )
    tail = cap - prompt - 1
    assert cut == [*full[:prompt], *full[len(full) - 1 - tail : len(full) - 1], full[-1]]
    assert cut[-1] == encoder.end_id and len(cut) == cap
    # the prompt's tokens are the formatted empty query's, so the instruction survives whole
    assert cut[:prompt] == encoder.tokenize([encoder.format("", "query", instruction)])[0][:prompt]
    vector = qwen3.embed(
        LONG, input_type="query", instruction=instruction, max_tokens=cap, truncation_side="left"
    )
    np.testing.assert_allclose(vector, qwen3.embed_token_ids([cut])[0], atol=1e-6)
    right = qwen3.embed(LONG, input_type="query", instruction=instruction, max_tokens=cap)
    assert float(vector @ right) < 0.9999  # the two cuts differ


def test_a_left_cut_puts_the_prompt_back_as_tokenised_alone(qwen3):
    # BPE merges the prompt's last character with a text's first ("Query:" + "w0" gives ":w"):
    # a left cut must not keep that merged token, which carries the cut-off text's first letter
    encoder = qwen3.encoder
    text = " ".join(f"w{i}" for i in range(60))
    prompt = encoder.prompt_ids("query", None)
    joined = encoder.tokenize([encoder.format(text, "query", None)])[0]
    assert joined[: len(prompt)] != prompt  # (the merge happens: else this test proves nothing)
    (cut,) = qwen3.tokenize([text], input_type="query", max_tokens=32, truncation_side="left")
    assert cut[: len(prompt)] == prompt
    assert cut[len(prompt) :] == joined[len(joined) - (32 - len(prompt)) :]


def test_texts_that_fit_are_not_cut_from_either_side(qwen3):
    texts = ["short", "also short"]
    np.testing.assert_array_equal(
        qwen3.embed(texts, truncate=True, truncation_side="left"), qwen3.embed(texts, truncate=True)
    )


def test_left_truncation_still_needs_truncate_or_a_cap(qwen3, minilm):
    from qwembed.backends import InputTooLongError

    with pytest.raises(InputTooLongError):
        minilm.embed(LONG, truncation_side="left")
