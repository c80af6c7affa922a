"""``qwembed eval``: files written, same numbers on re-runs, one-line errors with exit 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from qwembed.eval.cli import add_eval_parser, main
from qwembed.eval.errors import EvalError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def head(folder: Path, src: Path, n: int) -> str:
    """The first ``n`` lines of ``src`` under its own name in ``folder`` (names show in reports)."""
    folder.mkdir(exist_ok=True)
    out = folder / src.name
    out.write_text("".join(src.read_text(encoding="utf-8").splitlines(True)[:n]), encoding="utf-8")
    return str(out)


def records(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["records"]


def test_registers_on_a_main_parser():
    parser = argparse.ArgumentParser(prog="qwembed")
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "sts", "--model", "m", "--data", "d.tsv", "--out", "r.json"])
    assert callable(args.func) and args.model == ["m"] and args.data == ["d.tsv"]


@needs_data
def test_pairs_report_and_determinism(tmp_path, capsys):
    train = head(tmp_path / "train", DATA / "LCQMC" / "LCQMC.valid.data", 300)
    test = head(tmp_path, DATA / "LCQMC" / "LCQMC.test.data", 200)
    argv = [
        "eval",
        "pairs",
        "--quiet",
        "--model",
        "hashing:64",
        "--model",
        "hashing:32",
        "--train",
        train,
        "--data",
        test,
        "--shots",
        "20,50,all",
        "--seeds",
        "5",
    ]
    assert main([*argv, "--out", str(tmp_path / "1.json"), "--report", str(tmp_path / "rep.md")]) == 0
    assert main([*argv, "--out", str(tmp_path / "2.json")]) == 0
    first, second = records(tmp_path / "1.json"), records(tmp_path / "2.json")
    assert [r["model"] for r in first] == ["hashing:64", "hashing:32"]
    assert [r["details"] for r in first] == [r["details"] for r in second]
    rec = first[0]
    assert rec["task"] == "pairs" and set(rec["metrics"]) >= {"accuracy", "f1"}
    assert {"data", "model", "model_spec", "qwembed_version", "timing"} <= rec.keys()
    assert len(rec["data"]["sha256"]) == 64 and rec["timing"]["load_s"] >= 0
    report = (tmp_path / "rep.md").read_text(encoding="utf-8")
    assert "| 20 |" in report and "zero-shot" in report and "±" in report
    png = tmp_path / "rep-pairs-LCQMC.test.data.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and f"]({png.name})" in report
    assert "Few-shot pair classification" in capsys.readouterr().out  # tables on stdout too


def test_retrieval_and_sweep_reports(tmp_path):
    out, rep = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["eval", "retrieval", "--quiet", "--model", "hashing", "--data", "builtin:zh-hard"]
    assert main([*argv, "--out", str(out), "--report", str(rep)]) == 0
    assert (
        "Per category:" in rep.read_text(encoding="utf-8")
        and (tmp_path / "r-retrieval-builtin_zh-hard.png").exists()
    )
    argv = [
        "eval",
        "sweep",
        "--quiet",
        "--model",
        "hashing:64",
        "--data",
        "builtin:zh-hard",
        "--dims",
        "16,full",
        "--post",
        "none,whiten",
        "--save-transforms",
        str(tmp_path / "t"),
    ]
    assert main([*argv, "--out", str(out), "--report", str(rep)]) == 0
    assert records(out)[0]["task"] == "sweep" and len(list((tmp_path / "t").glob("*.npz"))) == 2
    assert "| 16 | off | whiten |" in rep.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("command", "content", "expected"),
    [
        ("sts", "a\tb\t1\nbroken line\n", "bad.tsv:2: expected 3 tab-separated columns"),
        ("sts", "", "bad.tsv: no sentence pairs found"),
        ("sts", "a\tb\tx\n", "bad.tsv:1: label 'x' is not a number"),
        ("pairs", "a\tb\t1\nc\td\t0.5\n", "bad.tsv:2: label 0.5 is not 0 or 1"),
    ],
)
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, command, content, expected):
    bad = tmp_path / "bad.tsv"
    bad.write_text(content, encoding="utf-8")
    extra = ["--train", str(bad)] if command == "pairs" else []
    code = main(
        ["eval", command, "--model", "hashing", "--data", str(bad), "--out", str(tmp_path / "o.json"), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["retrieval", "--data", "builtin:nope"], "unknown built-in data set"),
        (["retrieval", "--data", "builtin:zh-hard", "--model", "no-such-model"], "--model 'no-such-model'"),
        (["sweep", "--data", "builtin:zh-hard", "--post", "zca"], "--post: unknown post-processing"),
        (["pairs", "--data", "x.tsv", "--train", "x.tsv", "--shots", "ten"], "--shots: 'ten'"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, argv, expected):
    models = [] if "--model" in argv else ["--model", "hashing"]
    code = main(["eval", *argv, *models, "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("./no/such/folder", "does not exist"),
        ("st:no-such-model", "--model 'st:no-such-model'"),
        ("hashing:x", "expected hashing:DIM"),
        ("http://", "not an http(s) URL"),
        ("a/b/c", "unknown model 'a/b/c'"),  # neither a folder nor a hub id (owner/name)
        ("htp://typo", "unknown model 'htp://typo'"),
        # 16 GB a copy for 40 texts: the OOM killer ended the run without a word
        ("hashing:100000000", "--model 'hashing:100000000': DIM is at most 65536"),
    ],
)
def test_every_model_is_checked_before_the_first_runs(tmp_path, capsys, monkeypatch, spec, expected):
    """A typo in the last ``--model`` must not cost the hour the first one runs."""
    from qwembed.eval import models

    opened = []
    monkeypatch.setattr(models, "open_embedder", lambda *a, **k: opened.append(a) or pytest.fail("opened"))
    out = tmp_path / "o.json"
    code = main(
        [
            "eval",
            "retrieval",
            "--data",
            "builtin:zh-hard",
            "--model",
            "hashing",
            "--model",
            spec,
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not opened and not out.exists()


def test_a_later_model_failing_to_load_keeps_the_earlier_results(tmp_path, capsys):
    # a hub id passes the check; offline (conftest), loading it fails
    out = tmp_path / "o.json"
    argv = ["eval", "retrieval", "--quiet", "--data", "builtin:zh-hard", "--out", str(out)]
    code = main([*argv, "--model", "hashing:64", "--model", "no-such-owner/no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "--model 'no-such-owner/no-such-model': cannot load" in err
    assert "the results of the 1 model(s) before the error were written" in err
    assert [r["model"] for r in records(out)] == ["hashing:64"]


def test_any_load_failure_is_one_line_and_keeps_the_earlier_results(tmp_path, capsys, monkeypatch):
    """Not only a missing model: torch's assertion for a GPU it lacks, bad weights, memory."""
    from qwembed.engine.embedder import Embedder

    def fails(*args, **kwargs):
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(Embedder, "load", fails)
    out = tmp_path / "o.json"
    argv = ["eval", "retrieval", "--quiet", "--data", "builtin:zh-hard", "--out", str(out)]
    code = main([*argv, "--model", "hashing:64", "--model", "minilm"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--model 'minilm': cannot load: AssertionError: Torch not compiled with CUDA enabled" in err
    assert [r["model"] for r in records(out)] == ["hashing:64"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_device_the_machine_lacks_fails_before_any_model_runs(tmp_path, capsys):
    out = tmp_path / "o.json"
    argv = ["eval", "retrieval", "--quiet", "--data", "builtin:zh-hard", "--out", str(out), "--device"]
    assert main([*argv, "cuda", "--model", "hashing:64", "--model", "minilm"]) == 2
    err = capsys.readouterr().err
    assert "--device: device 'cuda': no CUDA GPU is usable here" in err and not out.exists()
    assert main([*argv, "nonsense", "--model", "minilm"]) == 2
    assert "unknown device 'nonsense'" in capsys.readouterr().err
    # the hashing baseline and endpoints compute nowhere near --device: it is moot for them
    assert main([*argv, "cuda", "--model", "hashing:64"]) == 0


def test_a_reranker_that_is_no_model_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["eval", "retrieval", "--quiet", "--data", "builtin:zh-hard", "--model", "hashing"]
    for rerank, expected in ((empty, "cannot load"), ("a/b/c", "unknown model 'a/b/c'")):
        code = main([*argv, "--rerank", str(rerank), "--out", str(tmp_path / "o.json")])
        err = capsys.readouterr().err
        assert code == 2 and f"--rerank '{rerank}'" in err and expected in err and "Traceback" not in err


@pytest.mark.parametrize(
    "case", ["same file", "a folder", "unwritable", "out in a file", "report under a file", "transforms"]
)
def test_outputs_that_cannot_be_written_fail_before_any_model_runs(tmp_path, capsys, monkeypatch, case):
    from qwembed.eval import models

    monkeypatch.setattr(models, "open_embedder", lambda *a, **k: pytest.fail("a model was opened"))
    out, file = tmp_path / "r.json", tmp_path / "afile"
    file.write_text("not a folder", encoding="utf-8")
    outputs = {
        "same file": ["--out", str(out), "--report", str(out)],
        "a folder": ["--out", str(tmp_path)],
        "unwritable": ["--out", "/proc/no-such-dir/r.json"],
        "out in a file": ["--out", str(file / "r.json")],
        "report under a file": ["--out", str(out), "--report", str(file / "sub" / "r.md")],
        "transforms": ["--out", str(out), "--save-transforms", str(file / "t")],
    }[case]
    command = ["sweep"] if case == "transforms" else ["sts"]
    code = main(["eval", *command, "--model", "minilm", "--data", "no-such.tsv", *outputs])
    err = capsys.readouterr().err
    # (a file in the way once read "cannot be written (File exists)", naming neither what nor where)
    in_the_way = f"{file} is a file, not a directory"
    expected = {"same file": "the same file", "a folder": "is a folder", "unwritable": "cannot be written"}
    assert code == 2 and expected.get(case, in_the_way) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_hashing_baseline_has_a_largest_size():
    from qwembed.eval.hashing_embedder import MAX_DIMENSION, HashingEmbedder
    from qwembed.eval.models import check_spec

    check_spec(f"hashing:{MAX_DIMENSION}")
    assert MAX_DIMENSION == 2**16 and HashingEmbedder(MAX_DIMENSION).dimension == MAX_DIMENSION
    with pytest.raises(EvalError, match="DIM is at most 65536"):
        check_spec(f"hashing:{MAX_DIMENSION + 1}")
    with pytest.raises(ValueError, match="between 1 and 65536"):
        HashingEmbedder(MAX_DIMENSION + 1)


@pytest.mark.parametrize("where", ["embedding", "loading", "cuda"])
def test_running_out_of_memory_is_one_line_and_keeps_the_earlier_results(
    tmp_path, capsys, monkeypatch, where
):
    """A MemoryError anywhere in a run (here the second model's) is the one line the docs promise."""
    import torch

    from qwembed.engine.embedder import Embedder
    from qwembed.eval.hashing_embedder import HashingEmbedder

    embed = HashingEmbedder.embed

    def runs_out(self, texts, **kwargs):
        if self.dimension == 32 and where == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nSee the docs")
        if self.dimension == 32:
            raise MemoryError
        return embed(self, texts, **kwargs)

    def loads_out(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(HashingEmbedder, "embed", runs_out)
    monkeypatch.setattr(Embedder, "load", loads_out)
    out = tmp_path / "o.json"
    second = "minilm" if where == "loading" else "hashing:32"
    argv = ["eval", "retrieval", "--quiet", "--data", "builtin:zh-hard", "--out", str(out)]
    code = main([*argv, "--model", "hashing:64", "--model", second])
    err = capsys.readouterr().err
    expected = {
        "embedding": "error: --model 'hashing:32': out of memory; try a smaller model, batch size",
        "loading": "error: --model 'minilm': cannot load: out of memory",
        "cuda": "--model 'hashing:32': out of memory (CUDA out of memory. Tried to allocate 2.00 GiB.);",
    }[where]
    assert code == 2 and expected in err and "Traceback" not in err
    assert "the results of the 1 model(s) before the error were written" in err
    assert [r["model"] for r in records(out)] == ["hashing:64"]


def pair_file(folder: Path, name: str, n: int = 40, tag: str = "") -> str:
    """``n`` labelled 0/1 pairs, written as ``folder/name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    lines = (f"{tag}句子{i}号\t{tag}第{i}个句子\t{i % 2}\n" for i in range(n))
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def test_pairs_evaluates_every_data_set(tmp_path, capsys):
    """Once only the last --data (and --train) were used; now one --train serves every --data, or
    the n-th --train the n-th --data."""
    train_a, train_b = pair_file(tmp_path, "a.train", tag="甲"), pair_file(tmp_path, "b.train", tag="乙")
    test_a, test_b = pair_file(tmp_path, "a.test", tag="丙"), pair_file(tmp_path, "b.test", tag="丁")
    base = ["eval", "pairs", "--quiet", "--model", "hashing:32", "--shots", "10,all", "--seeds", "2"]
    out, rep = tmp_path / "p.json", tmp_path / "p.md"
    argv = [*base, "--train", train_a, "--data", test_a, "--train", train_b, "--data", test_b]
    assert main([*argv, "--out", str(out), "--report", str(rep)]) == 0
    trained = [(r["dataset"], Path(r["data"]["train_path"]).name) for r in records(out)]
    assert trained == [("a.test", "a.train"), ("b.test", "b.train")]
    report = rep.read_text(encoding="utf-8")
    assert "pair classification: a.test" in report and "pair classification: b.test" in report
    assert main([*base, "--train", train_a, "--data", test_a, "--data", test_b, "--out", str(out)]) == 0
    assert [(r["dataset"], Path(r["data"]["train_path"]).name) for r in records(out)] == [
        ("a.test", "a.train"),
        ("b.test", "a.train"),
    ]
    capsys.readouterr()
    argv = [
        *base,
        "--train",
        train_a,
        "--train",
        train_b,
        "--data",
        test_a,
        "--data",
        test_b,
        "--data",
        test_a,
    ]
    assert main([*argv, "--out", str(tmp_path / "n.json")]) == 2
    err = capsys.readouterr().err
    assert "--train: 2 given for 3 --data; give one --train for all of them, or one per --data" in err


def test_sweep_evaluates_every_data_set(tmp_path):
    """Once only the last --data was swept; each set's transforms get a folder of their own."""
    sts = pair_file(tmp_path, "s.tsv", n=60)
    out, rep, saved = tmp_path / "s.json", tmp_path / "s.md", tmp_path / "t"
    argv = ["eval", "sweep", "--quiet", "--model", "hashing:32", "--dims", "16,full", "--post", "none,pca:8"]
    argv += ["--data", "builtin:zh-hard", "--data", sts, "--save-transforms", str(saved)]
    assert main([*argv, "--out", str(out), "--report", str(rep)]) == 0
    assert [(r["dataset"], r["config"]["kind"]) for r in records(out)] == [
        ("builtin:zh-hard", "retrieval"),
        ("s.tsv", "sts"),
    ]
    report = rep.read_text(encoding="utf-8")
    assert "## Sweep: hashing:32 on builtin:zh-hard" in report and "## Sweep: hashing:32 on s.tsv" in report
    assert len(list((saved / "builtin_zh-hard").glob("*.npz"))) == 2
    assert len(list((saved / "s.tsv").glob("*.npz"))) == 4  # (STS: one fit per instruction setting)


def test_data_sets_of_the_same_name_keep_apart(tmp_path):
    """Two folders' ``p.tsv``: records, report sections and plots are keyed by the set's name."""
    first, second = pair_file(tmp_path / "a", "p.tsv"), pair_file(tmp_path / "b", "p.tsv", tag="乙")
    out, rep = tmp_path / "o.json", tmp_path / "o.md"
    argv = ["eval", "sts", "--quiet", "--model", "hashing", "--data", first, "--data", second]
    assert main([*argv, "--out", str(out), "--report", str(rep)]) == 0
    assert [r["dataset"] for r in records(out)] == ["p.tsv", f"p.tsv ({second})"]
    assert rep.read_text(encoding="utf-8").count("## STS: p.tsv") == 2


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sweep", "--data", "builtin:zh-hard", "--dims", "8,8"], "--dims: '8' is given twice"),
        (
            ["sweep", "--data", "builtin:zh-hard", "--dims", "full,8,all"],
            "--dims: 'full' and 'all' are the same",
        ),
        (["sweep", "--data", "builtin:zh-hard", "--post", "none,none"], "--post: 'none' is given twice"),
        (
            ["sweep", "--data", "builtin:zh-hard", "--post", "whiten:8,whitening:08"],
            "'whiten:8' and 'whitening:08'",
        ),
        (
            ["retrieval", "--data", "builtin:zh-hard", "--data", "builtin:zh-hard"],
            "--data: 'builtin:zh-hard' is",
        ),
        (["sts", "--data", "{s}", "--data", "{s}"], "--data: '{s}' is given twice"),
        (["sts", "--data", "{s}", "--data", "{same}"], "--data: '{s}' and '{same}' are the same"),
        (["sweep", "--data", "{s}", "--data", "{s}"], "--data: '{s}' is given twice"),
        (["pairs", "--train", "{s}", "--data", "{s}", "--shots", "10,10"], "--shots: '10' is given twice"),
        (["pairs", "--train", "{s}", "--data", "{s}", "--data", "{s}"], "--data: '{s}' is given twice"),
    ],
)
def test_a_setting_given_twice_is_refused(tmp_path, capsys, monkeypatch, argv, expected):
    """As a repeated --model is: a repeat only evaluated the same thing again (``--dims 8,8 --post
    none,none``: four identical rows per instruction setting; a file twice: two identical sections)."""
    s = pair_file(tmp_path, "s.tsv")
    monkeypatch.chdir(tmp_path)
    names = {"s": s, "same": "./s.tsv"}
    argv = [arg.format(**names) for arg in argv]
    out = tmp_path / "o.json"
    code = main(["eval", *argv, "--model", "hashing", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"{expected.format(**names)}" in err and "give each once" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_batch_size_given_twice_is_refused(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--model", "hashing", "--batch-sizes", "1,8,1", "--out", str(out)]) == 2
    assert "--batch-sizes: '1' is given twice; give each once" in capsys.readouterr().err
    assert not out.exists()


def test_models_of_the_same_name_keep_apart(tmp_path, monkeypatch):
    """Two folders both called ``model``: their records, report sections and transforms must not merge."""
    from qwembed.eval import models
    from qwembed.eval.hashing_embedder import HashingEmbedder

    monkeypatch.setattr(models, "open_embedder", lambda spec, **options: HashingEmbedder(32, name="model"))
    out, saved = tmp_path / "s.json", tmp_path / "t"
    argv = ["eval", "sweep", "--quiet", "--data", "builtin:zh-hard", "--dims", "full", "--post", "whiten"]
    argv += ["--model", "one/model", "--model", "other/model", "--save-transforms", str(saved)]
    assert main([*argv, "--out", str(out), "--report", str(tmp_path / "s.md")]) == 0
    assert [r["model"] for r in records(out)] == ["model", "model (other/model)"]
    assert len(list(saved.glob("*.npz"))) == 2
    assert main([*argv, "--model", "one/model", "--out", str(out)]) == 2  # the same value twice


@needs_data
def test_pairs_limit_and_shots_beyond_the_training_set(tmp_path):
    out = tmp_path / "p.json"
    data = str(DATA / "LCQMC" / "LCQMC.test.data")
    argv = ["eval", "pairs", "--quiet", "--model", "hashing:32", "--train", data, "--data", data]
    assert main([*argv, "--limit", "60", "--shots", "20,99999,all", "--seeds", "2", "--out", str(out)]) == 0
    record = records(out)[0]
    assert record["data"]["train_pairs"] == record["data"]["pairs"] == 60  # --limit caps both
    rows = record["details"]["shots"]
    assert [(r["shots"], r["train_size"]) for r in rows] == [(20, 20), ("all", 60)]


def test_a_retrieval_set_given_to_a_pair_task_says_so(tmp_path, capsys):
    code = main(
        ["eval", "sts", "--model", "hashing", "--data", "builtin:zh-hard", "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "is a retrieval set; this task takes a pair file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module",
    [
        "qwembed.cli",
        "qwembed.backends",
        "qwembed.eval.cli",
        "qwembed.eval.models",
        "qwembed.eval.bench",
        "qwembed.kb.cli",
        "qwembed.kb.manager",
    ],
)
def test_the_command_lines_import_without_torch(module):
    """Evaluating an endpoint or the hashing baseline, and the KB's own modules, need no torch (a
    benchmarking child of the hashing model: 47 MiB without it, 366 with it). Checked in a fresh
    interpreter, as this one has torch loaded already."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_quiet_hashing_run_loads_no_torch(tmp_path):
    """``--quiet`` once imported the model loader (and torch) to hide progress bars that the
    hashing baseline never shows: its bench row's memory then measured torch, 366 MiB, not 40."""
    import subprocess
    import sys

    data = tmp_path / "pairs.tsv"
    data.write_text("今天天气好\t天气不错\t1\n我要退款\t怎么开发票\t0\n", encoding="utf-8")
    argv = ["sts", "--model", "hashing", "--data", str(data), "--out", str(tmp_path / "o.json"), "--quiet"]
    code = (
        "import sys; from qwembed.eval.cli import main; "
        f"main(['eval', *{argv!r}]); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_listing_the_knowledge_base_loads_no_torch(tmp_path):
    """``qwembed kb list`` (and ``--help``) start in a fraction of a second: torch took 2 s to import."""
    import subprocess
    import sys

    code = (
        "import sys; from qwembed.cli import main; "
        f"main(['kb', 'list', '--kb-dir', {str(tmp_path)!r}]); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"
