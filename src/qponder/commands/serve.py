from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model: str = typer.Option(..., "--model", help="Model folder, hub id or LoRA adapter folder."),
        host: str = typer.Option("127.0.0.1", help="Interface to bind (default: this machine only)."),
        port: int = typer.Option(8000, help="TCP port; 0 picks a free one (printed at start)."),
        max_batch: int = typer.Option(8, help="Most requests run in one model call."),
        batch_window_ms: float = typer.Option(5.0, help="How long the oldest queued request waits for batch-mates."),
        max_queue: int = typer.Option(128, help="Most queued requests; beyond it requests get 503 + Retry-After."),
        api_key_env: Optional[str] = typer.Option(None, help="Require 'Authorization: Bearer <key>' on /v1/*; the "
                                                             "key is read from this environment variable."),
        allow_urls: bool = typer.Option(False, "--allow-urls", help="Let requests name http(s) image URLs for "
                                                                    "the server to fetch (off: base64 only)."),
        allow_private_urls: bool = typer.Option(False, "--allow-private-urls", help="With --allow-urls, also fetch "
                                                "from loopback, private, link-local and other internal addresses "
                                                "(off: refused with 400)."),
        url_timeout: float = typer.Option(10.0, help="Seconds allowed for fetching one image URL."),
        max_image_bytes: int = typer.Option(20 * 1024 * 1024, help="Largest accepted image file, in bytes."),
        max_image_pixels: int = typer.Option(40_000_000, help="Largest accepted image, in pixels (checked before "
                                                              "decoding)."),
        min_pixels: Optional[int] = typer.Option(None, help="Upscale images below this many pixels (as score)."),
        max_pixels: Optional[int] = typer.Option(None, help="Downscale images above this many pixels (as score)."),
        max_new_tokens: int = typer.Option(256, help="Completion length for /v1/score and for chat requests "
                                                     "without max_tokens."),
        max_tokens_cap: int = typer.Option(4096, help="Largest max_tokens a chat request may ask for."),
        max_n: int = typer.Option(16, help="Largest n (chat) / samples (score) per request."),
        temperature: float = typer.Option(0.0, help="Default temperature of /v1/score (chat defaults to 1.0 as "
                                                    "OpenAI does)."),
        top_p: float = typer.Option(1.0, help="Default nucleus sampling threshold."),
        served_model_name: Optional[str] = typer.Option(None, help="Model id reported by the API (default: the "
                                                                   "model folder's name)."),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
        dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
        base_model: Optional[str] = typer.Option(None, help="Base model for a LoRA adapter folder."),
        seed: int = typer.Option(0, help="Base sampling seed."),
        threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
        graceful_timeout: float = typer.Option(30.0, help="On SIGTERM/SIGINT, seconds to let in-flight requests "
                                                          "finish."),
        log_level: str = typer.Option("warning", help="uvicorn log level (info also logs each request)."),
    ) -> None:
        """Serve a model over HTTP: /v1/score, OpenAI-compatible /v1/chat/completions, /v1/models, /health."""
        import ipaddress
        import os
        import sys

        from qponder.errors import QponderError
        from qponder.serve import require_serve_extra

        require_serve_extra()
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise QponderError(f"--api-key-env {api_key_env}: the environment variable is not set or is empty")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and api_key is None:
            print(f"warning: serving on {host} without --api-key-env: anyone who can reach this port can use the "
                  "model", file=sys.stderr)
        from qponder.serve.app import ServeConfig, create_app
        from qponder.serve.server import bind_socket, run_server

        config = ServeConfig(
            model=model, served_model_name=served_model_name, host=host, port=port, max_batch=max_batch,
            batch_window_ms=batch_window_ms, max_queue=max_queue, api_key=api_key, allow_urls=allow_urls,
            allow_private_urls=allow_private_urls, url_timeout=url_timeout, max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
            min_pixels=min_pixels, max_pixels=max_pixels, max_new_tokens=max_new_tokens,
            max_tokens_cap=max_tokens_cap, temperature=temperature, top_p=top_p, max_n=max_n, device=device,
            dtype=dtype, base_model=base_model, seed=seed, graceful_timeout=graceful_timeout,
        )
        config.check()
        sock = bind_socket(host, port)  # before loading the model: a port in use fails fast
        try:
            if threads is not None:
                import torch

                torch.set_num_threads(max(1, threads))
            app = create_app(config)
            stopped_by = run_server(app, sock, graceful_timeout=graceful_timeout, log_level=log_level)
        finally:
            sock.close()
        print(f"qponder serve: stopped{f' on {stopped_by}' if stopped_by else ''}; in-flight requests were "
              "answered", file=sys.stderr)
