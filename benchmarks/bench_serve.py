"""Benchmark: ``qponder serve`` throughput and latency, dynamic batching vs ``--max-batch 1``, on the tiny model.

Two real server processes (loaded in alternating rounds, never at the same time) answer ``POST /v1/score`` (JSON,
base64 PNG, greedy, ``--max-new-tokens`` fixed) from closed-loop clients at concurrency 1 and 16. Reported per run:
requests/s, p50/p99 latency, and the batch sizes the server's /health counters saw; the headline is the c=16
throughput ratio batched / unbatched. Every request must succeed (a 503 or error aborts the benchmark). The same
images are sent in the same order to both servers, and greedy decoding makes each image's work identical.

    .venv/bin/python -m benchmarks.bench_serve [--quick] [--threads 1] [--out bench-out/serve.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench-out/serve.json")
CONCURRENCY = (1, 16)


def _images(n: int) -> list[str]:
    from PIL import Image

    out = []
    for i in range(n):
        w, h = 56 + 8 * (i % 3), 48
        img = Image.new("RGB", (w, h))
        img.putdata([((x * 7 + i * 13) % 256, (y * 11 + i) % 256, (x * y + i) % 256) for y in range(h)
                     for x in range(w)])
        b = io.BytesIO()
        img.save(b, "PNG")
        out.append("data:image/png;base64," + base64.b64encode(b.getvalue()).decode())
    return out


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 40 samples is the slowest one, as it should be)."""
    k = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


async def _load(url: str, images: list[str], concurrency: int, total: int) -> tuple[list[float], float]:
    """Closed loop: ``concurrency`` clients send ``total`` requests; (per-request latencies, wall seconds)."""
    import httpx

    latencies: list[float] = []
    next_i = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < total:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            r = await client.post("/v1/score", json={"image": images[i % len(images)]})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"request {i} failed: HTTP {r.status_code} {r.text[:200]}")

    async with httpx.AsyncClient(base_url=url, timeout=300,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0


def _summary(latencies: list[float], wall: float, concurrency: int, batches: int) -> dict[str, Any]:
    lat = sorted(latencies)
    n = len(lat)
    return {"concurrency": concurrency, "requests": n, "wall_s": round(wall, 4),
            "requests_per_s": round(n / wall, 3), "p50_ms": round(1000 * _percentile(lat, 50), 2),
            "p99_ms": round(1000 * _percentile(lat, 99), 2), "mean_ms": round(1000 * statistics.fmean(lat), 2),
            "batches": batches, "mean_batch_size": round(n / batches, 2) if batches else None}


def run(quick: bool = False, threads: int = 1, max_new_tokens: int = 32) -> dict[str, Any]:
    """Batched (--max-batch 8) vs unbatched (--max-batch 1) at concurrency 1 and 16; returns the results dict.

    Both servers stay up for the whole run and are loaded in alternating rounds (B U, U B, ...), only one at a
    time, so a neighbour's load on a shared machine hits both configurations alike instead of whichever ran last.
    """
    import httpx

    from qponder.demo.tiny_model import build_tiny_model
    from qponder.serve.process import ServerProcess

    counts = {1: 12, 16: 64} if quick else {1: 40, 16: 256}
    rounds = 2 if quick else 4
    images = _images(16)
    configs = {"batched": 8, "unbatched": 1}
    with tempfile.TemporaryDirectory(prefix="qponder-bench-serve-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", family="qwen2_5_vl", size="tiny")
        servers = {name: ServerProcess(model_dir, "--max-batch", str(mb), "--max-new-tokens", str(max_new_tokens),
                                       "--threads", str(threads), "--max-queue", "1024",
                                       log_path=Path(tmp) / f"serve-{name}.log")
                   for name, mb in configs.items()}
        try:
            for srv in servers.values():
                srv.launch()
            for srv in servers.values():
                srv.wait_ready()
                asyncio.run(_load(srv.url, images, 4, 8))  # warm-up: first-call allocations, tokenizer caches
            runs: dict[str, dict[str, Any]] = {name: {"max_batch": mb} for name, mb in configs.items()}
            for c in CONCURRENCY:
                lat: dict[str, list[float]] = {name: [] for name in configs}
                wall = dict.fromkeys(configs, 0.0)
                batches = dict.fromkeys(configs, 0)
                for r in range(rounds):
                    for name in (list(configs) if r % 2 == 0 else list(reversed(configs))):
                        url = servers[name].url
                        before = httpx.get(url + "/health").json()["stats"]["batches_run"]
                        ls, w = asyncio.run(_load(url, images, c, counts[c] // rounds))
                        batches[name] += httpx.get(url + "/health").json()["stats"]["batches_run"] - before
                        lat[name] += ls
                        wall[name] += w
                for name in configs:
                    runs[name][f"c{c}"] = _summary(lat[name], wall[name], c, batches[name])
            for name, srv in servers.items():
                stats = httpx.get(srv.url + "/health").json()["stats"]
                runs[name]["max_batch_size_seen"] = stats["max_batch_size_seen"]
        finally:
            for srv in servers.values():
                srv.stop()
    b, u = runs["batched"], runs["unbatched"]
    return {
        "model": "tiny qwen2_5_vl (random weights)",
        "endpoint": "POST /v1/score (JSON base64 PNG, greedy)",
        "max_new_tokens": max_new_tokens,
        "torch_threads": threads,
        "quick": quick,
        "rounds": rounds,
        "runs": runs,
        "throughput_ratio_c16": round(b["c16"]["requests_per_s"] / u["c16"]["requests_per_s"], 3),
        "throughput_ratio_c1": round(b["c1"]["requests_per_s"] / u["c1"]["requests_per_s"], 3),
        "p99_ratio_c16": round(b["c16"]["p99_ms"] / u["c16"]["p99_ms"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (12 at c=1, 64 at c=16)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in each server (default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per request (default 32)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, threads=args.threads, max_new_tokens=args.max_new_tokens)
    print(f"qponder serve, tiny model, {res['max_new_tokens']} new tokens, {res['torch_threads']} torch thread(s)")
    for name, r in res["runs"].items():
        for c in CONCURRENCY:
            x = r[f"c{c}"]
            print(f"  {name:<9} (max-batch {r['max_batch']}) c={c:<2}  {x['requests_per_s']:7.2f} req/s   "
                  f"p50 {x['p50_ms']:8.1f} ms   p99 {x['p99_ms']:8.1f} ms   mean batch {x['mean_batch_size']}")
    print(f"  throughput ratio batched/unbatched: c=16 {res['throughput_ratio_c16']:.2f}x, "
          f"c=1 {res['throughput_ratio_c1']:.2f}x; p99 ratio at c=16 {res['p99_ratio_c16']:.2f}")
    from qponder.io import write_json_atomic

    write_json_atomic(res, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
