"""Description-quality judging against a real OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image

from localhttp import LocalServer, chat_completion, send_json
from qponder.judge import aggregate, judge_descriptions, parse_judgement


def test_parse_judgement_forms():
    assert parse_judgement('{"completeness": 2, "precision": 1, "relevance": 2}') == \
        {"completeness": 2.0, "precision": 1.0, "relevance": 2.0}
    assert parse_judgement('Sure! ```json\n{"completeness": 1.5, "precision": 0, "relevance": 1}\n```') == \
        {"completeness": 1.5, "precision": 0.0, "relevance": 1.0}
    assert parse_judgement("Completeness: 2\nPrecision = 1\nrelevance: 0") == \
        {"completeness": 2.0, "precision": 1.0, "relevance": 0.0}
    assert parse_judgement('{"completeness": 3, "precision": 1, "relevance": 1}') is None  # out of range
    assert parse_judgement("looks fine to me") is None
    assert parse_judgement("completeness: 2.5, precision: 1, relevance: 1") is None  # text form, out of range
    assert parse_judgement(None) is None


def test_aggregate_excludes_failures():
    agg = aggregate([{"ratings": {"completeness": 2, "precision": 1, "relevance": 2}},
                     {"ratings": {"completeness": 0, "precision": 1, "relevance": 1}}, {"ratings": None}])
    assert agg == {"n_judged": 2, "n_failed": 1, "completeness": 1.0, "precision": 1.0, "relevance": 1.5,
                   "total": 3.5}


class _Judge(BaseHTTPRequestHandler):
    calls: list = []
    flaked = False  # "flaky" reasonings fail once (HTTP 400), then succeed

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls.append(body)
        user = body["messages"][-1]["content"]
        text = next(p["text"] for p in user if p["type"] == "text")
        assert any(p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/") for p in user)
        status = 401 if "unauthorised" in text else 400 if "flaky" in text and not _Judge.flaked else 200
        if status != 200:
            _Judge.flaked = True
            send_json(self, status, {"error": {"message": "nope"}})
            return
        reply = "no idea" if "garbled" in text else json.dumps(
            {"completeness": 2 if "sharp" in text else 1, "precision": 1, "relevance": 2})
        send_json(self, 200, chat_completion([reply], model=body["model"]))

    def log_message(self, *a):
        pass


@pytest.fixture()
def judge_server():
    _Judge.calls = []
    _Judge.flaked = False
    with LocalServer(_Judge) as srv:
        yield srv.url


def test_judge_descriptions_end_to_end_and_resume(judge_server, tmp_path):
    recs = []
    for i, reasoning in enumerate(["The image is sharp.", "Blurry and noisy.", "garbled", None]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (i * 40, 90, 90)).save(p)
        recs.append({"image": f"demo/{i}", "path": str(p), "reasoning": reasoning})
    out = tmp_path / "judgements.jsonl"
    agg = judge_descriptions(recs, out, url=judge_server, model="judge-model")
    assert agg["n_judged"] == 2 and agg["n_failed"] == 1 and agg["n_no_reasoning"] == 1  # not sent
    assert agg["completeness"] == 1.5 and agg["total"] == pytest.approx(1.5 + 1 + 2)
    assert len(_Judge.calls) == 3 and _Judge.calls[0]["model"] == "judge-model"
    assert "The image is sharp." in json.dumps(_Judge.calls[0])
    again = judge_descriptions(recs, out, url=judge_server, model="judge-model")
    assert again == agg and len(_Judge.calls) == 3  # resumed: nothing re-sent


def _records(tmp_path, reasonings):
    recs = []
    for i, reasoning in enumerate(reasonings):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 40, 90, 90)).save(p)
        recs.append({"image": f"demo/{i}", "path": str(p), "reasoning": reasoning})
    return recs


def test_failed_requests_are_counted_then_retried_on_resume(judge_server, tmp_path):
    # Regression: a failed request was stored like a reply, so a re-run never asked again.
    recs = _records(tmp_path, ["The image is sharp.", "flaky but sharp"])
    out = tmp_path / "judgements.jsonl"
    first = judge_descriptions(recs, out, url=judge_server, model="m")
    assert (first["n_judged"], first["n_failed"]) == (1, 1) and len(_Judge.calls) == 2
    second = judge_descriptions(recs, out, url=judge_server, model="m")
    assert (second["n_judged"], second["n_failed"]) == (2, 0) and len(_Judge.calls) == 3
    assert second["completeness"] == 2.0


def test_a_status_that_fails_every_request_stops_judging(judge_server, tmp_path):
    from qponder.errors import QponderError

    recs = _records(tmp_path, ["unauthorised", "The image is sharp."])
    with pytest.raises(QponderError, match="description judge: .*HTTP 401"):
        judge_descriptions(recs, tmp_path / "j.jsonl", url=judge_server, model="m")
    assert len(_Judge.calls) == 1
