"""Benchmark: distillation throughput against a local OpenAI-compatible server with a fixed 20 ms latency.

For concurrency 1, 8 and 32 it reports requests/s of

* ``pipeline`` -- the whole ``run_distill`` (image encoding, requests, parsing, filtering, two fsynced appends per
  image, dataset card), with the ``openai`` backend, from start to finish;
* ``client`` -- the bare ``AsyncOpenAIChatClient`` sending the same requests (what the pipeline's bookkeeping costs
  is the gap between the two);
* ``ideal`` -- concurrency / latency, the server-bound ceiling;

and the rule teacher's images/s (the offline demo path). The server is an asyncio HTTP/1.1 server in its own process
(so it does not compete with the client for the GIL); it sleeps 20 ms per request and answers in the output format.

    .venv/bin/python -m benchmarks.bench_distill [--quick] [--out bench-out/distill.json]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench-out/distill.json")
LATENCY_S = 0.020
CONCURRENCY = (1, 8, 32)


def _serve(port_q, latency: float) -> None:
    """A minimal keep-alive HTTP/1.1 chat-completions server (asyncio), one answer in the output format."""
    answer = json.dumps({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "<think>The image is sharp and clean, with natural colours. Overall, "
                                        "the quality is good.</think>\n<answer>3.00</answer>"}}]}).encode()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(answer)).encode() + b"\r\n\r\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                await asyncio.sleep(latency)
                writer.write(head + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
        port_q.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _images(root: Path, n: int) -> Path:
    """n distinct 224x224 PNGs (smooth gradients + a little noise, ~50-100 kB like real photos) and a manifest."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
    rows = []
    for i in range(n):
        base = 128 + 60 * np.sin(xx / (9 + i % 13)) * np.cos(yy / (7 + i % 11))
        img = np.clip(base[..., None] + rng.normal(0, 4, (224, 224, 3)) + [i % 50, 0, -(i % 30)], 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / f"im{i:04d}.png")
        rows.append({"image": f"im{i:04d}.png", "mos": f"{1 + (i % 9) * 0.5:.2f}", "split": "train"})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "mos", "split"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


def _pipeline(manifest: Path, out: Path, url: str, concurrency: int, n: int) -> dict[str, Any]:
    from qponder.config import load_config
    from qponder.distill import DistillSettings, run_distill

    cfg = load_config(DistillSettings, None, [
        f"data={manifest}", f"out={out}", f"max_samples={n}", "progress=false", "histogram=false",
        "teacher.backend=openai", "teacher.model=bench", f"teacher.base_url={url}", "teacher.api_key_env=",
        f"teacher.concurrency={concurrency}", "filter.tolerance=4"])
    t0 = time.perf_counter()
    res = run_distill(cfg)
    dt = time.perf_counter() - t0
    assert res.n_kept == n and res.n_errors == 0, res
    return {"requests": n, "wall_s": round(dt, 3), "requests_per_s": round(n / dt, 1)}


def _client(manifest: Path, url: str, concurrency: int, n: int) -> dict[str, Any]:
    from qponder.openai_compat import AsyncOpenAIChatClient, image_message, image_to_data_url

    urls = [image_to_data_url(p, format=None) for p in sorted(manifest.parent.glob("im*.png"))[:n]]

    async def main() -> float:
        sem = asyncio.Semaphore(concurrency)
        async with AsyncOpenAIChatClient(url, model="bench", api_key_env=None, max_connections=concurrency) as c:
            async def one(u: str) -> None:
                async with sem:
                    await c.chat(image_message(u, "Rate the image."), temperature=0.0)

            t0 = time.perf_counter()
            await asyncio.gather(*[one(u) for u in urls])
            return time.perf_counter() - t0

    dt = asyncio.run(main())
    return {"requests": n, "wall_s": round(dt, 3), "requests_per_s": round(n / dt, 1)}


def _rule(out: Path, n: int) -> dict[str, Any]:
    from qponder.demo.runner import distill_demo_records

    t0 = time.perf_counter()
    distill_demo_records(out, max_samples=n)
    dt = time.perf_counter() - t0
    return {"images": n, "wall_s": round(dt, 3), "images_per_s": round(n / dt, 1)}


def _demo_build(out: Path) -> dict[str, Any]:
    """Seconds to build the demo dataset from scratch (its speed lives here, not in a timed test)."""
    from qponder.demo.data import build_demo_dataset

    t0 = time.perf_counter()
    build_demo_dataset(out, seed=0)
    return {"wall_s": round(time.perf_counter() - t0, 2), "target_s": 60}


def run(quick: bool = False) -> dict[str, Any]:
    sizes = {1: 40, 8: 160, 32: 320} if quick else {1: 150, 8: 600, 32: 1500}
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(q, LATENCY_S), daemon=True)
    server.start()
    try:
        port = q.get(timeout=30)
        url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory(prefix="qponder-bench-distill-") as tmp:
            tmp_p = Path(tmp)
            manifest = _images(tmp_p / "data", max(sizes.values()))
            _client(manifest, url, 4, 8)  # warm-up: imports, connections, the first run's one-off costs
            _pipeline(manifest, tmp_p / "warm-up", url, 4, 8)
            results: dict[str, Any] = {"latency_ms": LATENCY_S * 1000, "pipeline": {}, "client": {}, "ideal": {}}
            for c in CONCURRENCY:
                n = sizes[c]
                results["client"][str(c)] = _client(manifest, url, c, n)
                results["pipeline"][str(c)] = _pipeline(manifest, tmp_p / f"out-{c}", url, c, n)
                results["ideal"][str(c)] = {"requests_per_s": round(c / LATENCY_S, 1)}
                p, cl = results["pipeline"][str(c)], results["client"][str(c)]
                p["share_of_client_rate"] = round(p["requests_per_s"] / cl["requests_per_s"], 3)
                p["share_of_ideal"] = round(p["requests_per_s"] / (c / LATENCY_S), 3)
            results["rule_teacher"] = _rule(tmp_p / "rule", 40 if quick else 200)
            results["demo_build"] = _demo_build(tmp_p / "demo-data")
    finally:
        server.terminate()
        server.join(5)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    res = run(quick=a.quick)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
