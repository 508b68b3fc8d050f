"""Description-quality judging against a real OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

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
    assert parse_judgement(None) is None


def test_aggregate_excludes_failures():
    agg = aggregate([{"ratings": {"completeness": 2, "precision": 1, "relevance": 2}},
                     {"ratings": {"completeness": 0, "precision": 1, "relevance": 1}}, {"ratings": None}])
    assert agg == {"n_judged": 2, "n_failed": 1, "completeness": 1.0, "precision": 1.0, "relevance": 1.5,
                   "total": 3.5}


class _Judge(BaseHTTPRequestHandler):
    calls: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls.append(body)
        user = body["messages"][-1]["content"]
        text = next(p["text"] for p in user if p["type"] == "text")
        assert any(p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/") for p in user)
        reply = "no idea" if "garbled" in text else json.dumps(
            {"completeness": 2 if "sharp" in text else 1, "precision": 1, "relevance": 2})
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                        "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture()
def judge_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Judge.calls = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_judge_descriptions_end_to_end_and_resume(judge_server, tmp_path):
    recs = []
    for i, reasoning in enumerate(["The image is sharp.", "Blurry and noisy.", "garbled", None]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (i * 40, 90, 90)).save(p)
        recs.append({"image": f"demo/{i}", "path": str(p), "reasoning": reasoning})
    out = tmp_path / "judgements.jsonl"
    agg = judge_descriptions(recs, out, url=judge_server, model="judge-model")
    assert agg["n_judged"] == 2 and agg["n_failed"] == 1  # no request for the record without reasoning
    assert agg["completeness"] == 1.5 and agg["total"] == pytest.approx(1.5 + 1 + 2)
    assert len(_Judge.calls) == 3 and _Judge.calls[0]["model"] == "judge-model"
    assert "The image is sharp." in json.dumps(_Judge.calls[0])
    again = judge_descriptions(recs, out, url=judge_server, model="judge-model")
    assert again == agg and len(_Judge.calls) == 3  # resumed: nothing re-sent
