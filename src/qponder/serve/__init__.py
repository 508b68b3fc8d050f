"""``qponder serve``: an HTTP server for a reasoning IQA model (score endpoint + an OpenAI chat-completions subset).

FastAPI, uvicorn and python-multipart are an optional extra (``pip install 'qponder[serve]'``), so nothing here
imports them at module level: ``require_serve_extra()`` turns their absence into a one-line user error, and
``create_app`` / ``run_server`` import them when called.
"""

from __future__ import annotations

from qponder.errors import QponderError

SERVE_EXTRA_MESSAGE = "qponder serve needs the 'serve' extra: pip install 'qponder[serve]'"

__all__ = ["SERVE_EXTRA_MESSAGE", "ServeConfig", "create_app", "bind_socket", "require_serve_extra", "run_server"]


def require_serve_extra() -> None:
    """Raise QponderError when fastapi, uvicorn or python-multipart cannot be imported."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (starlette's form parser)
        import uvicorn  # noqa: F401
    except ImportError:
        raise QponderError(SERVE_EXTRA_MESSAGE) from None


def __getattr__(name: str):
    # Lazy re-exports: `from qponder.serve import create_app` works without importing FastAPI at package import.
    if name in ("ServeConfig", "create_app"):
        from qponder.serve import app

        return getattr(app, name)
    if name in ("run_server", "bind_socket"):
        from qponder.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'qponder.serve' has no attribute {name!r}")
