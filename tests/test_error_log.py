"""Every error response is logged in one line naming its code and message (the access log is off),
and an overload's thousands of 429s are capped at a few lines a second (api/observe.py)."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from fake_encoders import SlowEncoder
from qwembed.api import ServerSettings, create_app, observe
from qwembed.engine.pool import ModelPool


@pytest.fixture()
def client():
    pool = ModelPool()
    pool.add_encoder(SlowEncoder(0.0))
    with TestClient(create_app(pool, ServerSettings())) as test_client:
        yield test_client


def test_an_error_response_is_logged_with_its_code_and_message(client, caplog):
    with caplog.at_level(logging.INFO, logger="qwembed.api.errors"):
        response = client.post("/v1/embeddings", json={"input": [[1, 2, 3]]})
        assert response.status_code == 400
        assert client.post("/v1/embeddings", json={"input": ["fine"]}).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "qwembed.api.errors"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("POST /v1/embeddings → 400 token_ids_not_accepted: token-id input is off")


def test_error_lines_are_capped_per_second_and_the_rest_counted(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(observe.time, "monotonic", lambda: now[0])
    error_log = observe.ErrorLog(per_second=2)
    body = b'{"error": {"code": "overloaded", "message": "busy"}}'
    with caplog.at_level(logging.INFO, logger="qwembed.api.errors"):
        for _ in range(5):
            error_log("POST", "/v1/embeddings", 429, *observe._code_and_message(body, 429))
        now[0] = 101.2
        error_log("POST", "/v1/embeddings", 429, *observe._code_and_message(body, 429))
    lines = [r.getMessage() for r in caplog.records if r.name == "qwembed.api.errors"]
    assert len(lines) == 3
    assert lines[0] == "POST /v1/embeddings → 429 overloaded: busy"
    assert lines[2].endswith("(3 more error responses not logged)")


def test_a_server_error_is_a_warning_and_a_long_message_is_cut(caplog):
    error_log = observe.ErrorLog()
    body = b'{"error": {"code": "internal_error", "message": "' + b"x" * 1000 + b'"}}'
    with caplog.at_level(logging.INFO, logger="qwembed.api.errors"):
        error_log("POST", "/v1/rerank", 500, *observe._code_and_message(body, 500))
        error_log("GET", "/nowhere", 404, *observe._code_and_message(b"Not Found", 404))
    first, second = caplog.records
    assert first.levelno == logging.WARNING and len(first.getMessage()) < 400
    assert second.levelno == logging.INFO and second.getMessage() == "GET /nowhere → 404 http_404"
