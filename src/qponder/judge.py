"""Description quality: an OpenAI-compatible judge rates each reasoning against its image (Q-Bench A2 style).

The paper compares descriptions, not only scores. Each reasoning is sent with its image to a judge model, which rates
completeness, precision and relevance on 0-2 (Q-Bench's low-level description criteria). Ratings are appended to
``judgements.jsonl`` as they arrive (resumable), and their means (plus the 0-6 total) go into the results table.
A reply without parsable ratings is recorded and counted in ``n_failed`` (excluded from the means); a request that
failed (server error, timeout) is recorded with ``error``, counted too, and sent again on the next run; a status
that fails every request (401/403/404) stops judging with one error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from qponder.errors import QponderError
from qponder.prompts import DESCRIPTION_JUDGE_PROMPT, DESCRIPTION_JUDGE_SYSTEM

CRITERIA = ("completeness", "precision", "relevance")

_NUM = r"\s*[:=]\s*\"?([0-2](?:\.\d+)?)"


def parse_judgement(text: str) -> Optional[dict[str, float]]:
    """Ratings from the judge's reply (JSON, or 'criterion: n' text); None when any criterion is missing."""
    if not isinstance(text, str):
        return None
    m = re.search(r"\{.*\}", text, flags=re.S)
    if m:
        try:
            obj = json.loads(m.group(0))
            vals = {k: float(obj[k]) for k in CRITERIA}
            if all(0 <= v <= 2 for v in vals.values()):
                return vals
        except (ValueError, KeyError, TypeError):
            pass
    vals = {}
    for k in CRITERIA:
        mk = re.search(k + _NUM, text, flags=re.I)
        if not mk:
            return None
        vals[k] = float(mk.group(1))
    if not all(0 <= v <= 2 for v in vals.values()):  # "completeness: 2.5" is not a 0-2 rating
        return None
    return vals


def aggregate(judgements: list[dict]) -> dict[str, Any]:
    ok = [j["ratings"] for j in judgements if j.get("ratings")]
    out: dict[str, Any] = {"n_judged": len(ok), "n_failed": len(judgements) - len(ok)}
    for k in CRITERIA:
        out[k] = sum(r[k] for r in ok) / len(ok) if ok else None
    out["total"] = sum(out[k] for k in CRITERIA) if ok else None
    return out


def judge_descriptions(records: list[dict], out_file: str | Path, *, url: str, model: str = "judge",
                       api_key_env: Optional[str] = None, max_samples: Optional[int] = None,
                       timeout: float = 120.0) -> dict[str, Any]:
    """Judge each record's reasoning (records from predictions.jsonl: ``image`` id, ``path``, ``reasoning``)."""
    from qponder.data import load_image
    from qponder.io import append_jsonl, read_jsonl
    from qponder.openai_compat import OpenAIChatClient, OpenAICompatError, image_to_data_url

    out_file = Path(out_file)
    # Replies are final (a reply without ratings stays a failure); a request that failed is tried again.
    done = ({j["image"]: j for j in read_jsonl(out_file) if not j.get("error")} if out_file.exists() else {})
    todo = [r for r in records if r.get("reasoning")]
    if max_samples:
        todo = todo[:max_samples]
    failed: dict[str, dict] = {}
    with OpenAIChatClient(url, model=model, api_key_env=api_key_env, timeout=timeout) as client:
        for r in todo:
            if r["image"] in done:
                continue
            img = load_image(r.get("path") or r["image"])
            messages = [
                {"role": "system", "content": DESCRIPTION_JUDGE_SYSTEM},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_to_data_url(img, format="JPEG")}},
                    {"type": "text", "text": DESCRIPTION_JUDGE_PROMPT.format(reasoning=r["reasoning"])}]},
            ]
            try:
                reply = client.chat(messages, temperature=0.0, max_tokens=128)[0]
            except OpenAICompatError as e:
                if e.fatal:  # wrong key / URL / model: every other request would fail the same way
                    raise QponderError(f"description judge: {e}") from None
                rec = {"image": r["image"], "error": str(e), "ratings": None}
                append_jsonl(out_file, rec)  # one failed request must not stop the evaluation; counted, retried
                failed[r["image"]] = rec
                continue
            rec = {"image": r["image"], "reply": reply, "ratings": parse_judgement(reply)}
            append_jsonl(out_file, rec)
            done[r["image"]] = rec
    result = aggregate([done.get(r["image"]) or failed[r["image"]] for r in todo
                        if r["image"] in done or r["image"] in failed])
    result["n_no_reasoning"] = sum(1 for r in records if not r.get("reasoning"))  # nothing to judge: not sent
    return result
