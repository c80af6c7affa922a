"""schemathesis against the served OpenAPI spec: no 5xx, responses as the spec declares them.

Bounded for CI (over 1,000 generated requests in all); `bench/fuzz_api.sh` runs a longer session.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test dependency")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

from qwembed.api import ServerSettings, create_app  # noqa: E402
from qwembed.backends import LoadOptions, load_encoder, load_reranker  # noqa: E402
from qwembed.engine.pool import ModelPool  # noqa: E402

# per operation; the parameter-less GET routes run out of distinct cases early, POST does not
EXAMPLES_PER_OPERATION = 400


# module-level like APP (schemathesis needs the app at import); removed when the session's
# interpreter exits, so repeated runs don't leave model folders in the temp dir
_SCRATCH = tempfile.TemporaryDirectory(prefix="qwembed-fuzz-")


def _app():
    from rerank_fixtures import build_minilm_cross_encoder

    pool = ModelPool()
    pool.add_encoder(load_encoder("minilm", options=LoadOptions(device="cpu", dtype="float32")))
    cross_encoder = build_minilm_cross_encoder(Path(_SCRATCH.name) / "cross-encoder")
    pool.add_reranker(load_reranker(str(cross_encoder), options=LoadOptions(device="cpu", dtype="float32")))
    from qwembed.kb import KnowledgeBaseManager

    kb = KnowledgeBaseManager(Path(_SCRATCH.name) / "kb", pool.embedder, reranker_factory=pool.reranker)
    settings = ServerSettings(max_client_batch_size=64, max_body_bytes=256 * 1024)
    return create_app(pool, settings, kb=kb)


APP = _app()
# Invalid data must be refused. 413 counts as a refusal: a generated body can break the schema and
# also exceed --max-body-bytes, and the size is checked first, before the JSON is even parsed.
_REFUSALS = [*SchemathesisConfig().projects.default.checks.negative_data_rejection.expected_statuses, "413"]
_CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": _REFUSALS}}}
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=_CONFIG)


@pytest.fixture(scope="module", autouse=True)
def _lifespan():
    from fastapi.testclient import TestClient

    with TestClient(APP):  # runs startup (warm-up, readiness) for the ASGI calls below
        yield


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_api_conforms_to_its_spec(case):
    # "Schema-valid request rejected" is excluded on purpose: a text over the model's token limit,
    # `dimensions` above the model's size or a token id beyond its vocabulary are valid JSON Schema
    # but must be refused (400), and JSON Schema cannot express limits that depend on the model.
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])


def test_fuzzing_sent_enough_requests_and_got_no_server_error():
    """Runs after the generated cases (pytest keeps file order): reads the app's own counters."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(APP.state.metrics.render().decode()):
        if family.name == "qwembed_requests":
            for sample in family.samples:
                if sample.name == "qwembed_requests_total":
                    status = sample.labels["status"]
                    counts[status] = counts.get(status, 0) + sample.value
    assert sum(counts.values()) >= 1000, counts
    assert not any(status.startswith("5") for status in counts), counts
