"""Chunking edge cases with a word/character counter (no model needed)."""

from __future__ import annotations

from kb_fixtures import StubEmbedder
from qwembed.kb.chunking import chunk_text, embedder_token_counter, split_sentences
from qwembed.kb.settings import ChunkingSettings

COUNT, OVERHEAD = embedder_token_counter(StubEmbedder(max_tokens=512))


def chunks(text: str, size: int = 20, overlap: int = 4):
    return chunk_text(text, ChunkingSettings(size, overlap), COUNT, OVERHEAD)


def test_sentences_split_on_chinese_and_latin_ends():
    assert split_sentences("今天下雨。明天晴！真的吗？是的；好") == [
        "今天下雨。",
        "明天晴！",
        "真的吗？",
        "是的；",
        "好",
    ]
    assert split_sentences("Pi is 3.14 today. Yes! e.g.x stays") == [
        "Pi is 3.14 today. ",
        "Yes! ",
        "e.g.x stays",
    ]
    assert split_sentences("他说：“好。”然后走了。") == ["他说：“好。”", "然后走了。"]


def test_cjk_without_spaces_is_cut_within_the_budget():
    text = "我们今天去公园散步然后回家吃饭" * 30  # no punctuation, no spaces at all
    result = chunks(text)
    assert len(result) > 1
    assert all(c.tokens <= 20 - OVERHEAD for c in result)
    assert "".join(c.text for c in result) == text  # nothing lost, nothing repeated


def test_chinese_sentences_are_kept_whole_and_overlap():
    sentences = [f"第{i}句话在这里结束。" for i in range(12)]
    result = chunks("".join(sentences), size=40, overlap=10)  # 9 tokens a sentence, 38 a chunk
    assert [c.text for c in result[:2]] == ["".join(sentences[0:4]), "".join(sentences[3:7])]
    assert all(c.text.endswith("。") and c.tokens <= 38 for c in result)
    assert result[-1].text.endswith(sentences[-1])


def test_very_long_sentence_is_split():
    text = "word " * 500 + "end."
    result = chunks(text)
    assert len(result) >= 25
    assert all(c.tokens <= 18 for c in result)


def test_tiny_and_empty_texts():
    assert [c.text for c in chunks("hi")] == ["hi"]
    assert chunks("") == []
    assert chunks("  \n\n \t ") == []


def test_paragraph_boundaries_are_preferred():
    paragraph = "One two three four. Five six seven eight."
    result = chunks("\n\n".join([paragraph] * 3), size=30, overlap=0)
    # p1+p2 fill half the budget: the third paragraph starts a chunk instead of being split
    assert [c.text for c in result] == [paragraph + "\n\n" + paragraph, paragraph]


def test_overlap_never_blocks_progress():
    text = " ".join(f"Sentence number {i} has some words in it." for i in range(40))
    result = chunks(text, size=24, overlap=12)
    assert result[-1].text.endswith("39 has some words in it.")
    assert all(c.tokens <= 22 for c in result)
