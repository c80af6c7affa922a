"""kill -9 in the middle of ingestion: every acknowledged document survives, none is half there."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from kb_fixtures import StubEmbedder
from qwembed.kb import KnowledgeBaseManager

TESTS = Path(__file__).parent

CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from kb_fixtures import StubEmbedder
    from qwembed.kb import Document, KnowledgeBaseManager

    stub = StubEmbedder()
    manager = KnowledgeBaseManager(Path({root!r}), lambda model: stub)
    manager.create("crash", "stub")
    round_ = {round_}
    for step in range(10_000):
        # new documents plus replacements of earlier ones with a different number of chunks
        text = "word " * 150
        batch = [Document(f"r{{round_}}-{{step}}-{{i}}", f"Doc {{step}} {{i}}. " + text) for i in range(4)]
        if step:
            size = 40 if step % 2 else 400
            batch.append(Document(f"r{{round_}}-{{step - 1}}-0", f"Version {{step}}. " + "text " * size))
        report = manager.add("crash", batch)
        print("ACK", *(report.added + report.replaced), flush=True)
    """
)


def test_kill_dash_nine_mid_ingest(tmp_path):
    root = tmp_path / "kb"
    acknowledged: set[str] = set()
    rng = random.Random(4)
    for round_ in range(3):
        code = CHILD.format(tests=str(TESTS), root=str(root), round_=round_)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        wanted = rng.randint(3, 12)
        seen = 0
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("ACK"):
                acknowledged.update(line.split()[1:])
                seen += 1
                if seen >= wanted:
                    break
        # the child is already inside its next add (embedding or committing) when it dies
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL

    manager = KnowledgeBaseManager(root, lambda model: StubEmbedder())
    store = manager.get("crash").store
    layout = store.chunk_layout()
    assert acknowledged <= set(layout), acknowledged - set(layout)
    for doc_id, (counts, positions, hashes) in layout.items():
        assert len(counts) == 1 and len(hashes) == 1, doc_id  # one version of the document only
        assert sorted(positions) == list(range(counts.pop())), doc_id  # every chunk, none twice
    # the store still serves and takes writes after the crashes
    assert manager.search("crash", "word", mode="hybrid", k=3)
    assert manager.add("crash", [manager_doc()]).added == ["after"]


def manager_doc():
    from qwembed.kb import Document

    return Document("after", "written after the crash")
