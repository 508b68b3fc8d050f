"""qponder: reasoning-based visual quality assessment (distil -> SFT -> GRPO -> evaluate -> serve)."""

__version__ = "0.1.0"

from qponder.errors import QponderError  # noqa: E402

__all__ = ["QponderError", "__version__"]
