"""How sure is a model of its answer's digits? A diagnostic for answers that collapse onto a few values.

For each scored image of a predictions file (``qponder eval``/``score`` output with the reasoning kept), the model
is shown its own reasoning and ``<answer>``, and the next-token distribution over the digits 0-9 is read twice: for
the leading digit, and for the tenths digit after the leading digit the model actually wrote and a ".". A flat tenths
distribution (entropy near log2(10) = 3.32 bits) means greedy decoding writes a habitual digit there whatever the
image: the answers collapse because the model does not know the digit, not because the data lack spread.

    python -m benchmarks.answer_digits MODEL PREDICTIONS.jsonl [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from typing import Sequence


def digit_certainty(leading: Sequence[Sequence[float]], tenths: Sequence[Sequence[float]]) -> dict:
    """Summary of per-image digit distributions (each a list of 10 probabilities for 0-9): mean probability of the
    most likely leading digit (1-5) and tenths digit, the tenths digit's mean entropy in bits, and how often each
    tenths digit is the most likely one."""
    if len(leading) != len(tenths) or not leading:
        raise ValueError("need one leading and one tenths distribution per image, and at least one image")

    def entropy(p):
        return -sum(x * math.log2(x) for x in p if x > 0)

    argmax = Counter(str(max(range(10), key=lambda d: p[d])) for p in tenths)
    n = len(leading)
    return {"n": n, "leading_top_p": sum(max(p[1:6]) for p in leading) / n,
            "tenths_top_p": sum(max(p) for p in tenths) / n,
            "tenths_entropy_bits": sum(entropy(p) for p in tenths) / n,
            "tenths_entropy_bits_uniform": math.log2(10), "tenths_argmax": dict(argmax.most_common())}


def measure(model: str, rows: list[dict], batch_size: int = 8) -> dict:
    """:func:`digit_certainty` of ``model`` on prediction ``rows`` (``path``, ``reasoning``, ``score`` each), read
    from the logits the expected read-out uses (``QualityScorer.answer_logits``). Answers of 5 have no tenths
    digit to doubt (5 can only be 5.00) and are left out."""
    import torch
    from PIL import Image

    from qponder.infer import QualityScorer

    rows = [r for r in rows if r.get("score") is not None and r.get("reasoning") and float(r["score"]) < 5]
    if not rows:
        raise SystemExit("no prediction below 5 with both a score and its reasoning (use a predictions.jsonl written "
                         "by qponder eval or score with a generating read-out)")
    scorer = QualityScorer(model, device="cpu", dtype="float32", batch_size=batch_size)
    tok = scorer.processor.tokenizer
    digit_ids = []
    for d in range(10):
        ids = tok.encode(str(d), add_special_tokens=False)
        if len(ids) != 1:
            raise SystemExit(f"this tokenizer writes the digit {d} as {len(ids)} tokens; the diagnostic needs one")
        digit_ids.append(ids[0])
    leading, tenths = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = [Image.open(r["path"]).convert("RGB") for r in chunk]
        lead, fraction = scorer.answer_logits(images, [r["reasoning"] for r in chunk])
        written = torch.tensor([int(float(r["score"])) - 1 for r in chunk])  # the leading digit the model wrote
        after = fraction[torch.arange(len(chunk)), written]  # the logits after "<answer>d." for that digit
        leading.extend(torch.softmax(lead[:, digit_ids].float(), -1).tolist())
        tenths.extend(torch.softmax(after[:, digit_ids].float(), -1).tolist())
    return {"model": model, **digit_certainty(leading, tenths)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("predictions")
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args(argv)
    from qponder.io import read_jsonl

    print(json.dumps(measure(a.model, list(read_jsonl(a.predictions)), a.batch_size), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
