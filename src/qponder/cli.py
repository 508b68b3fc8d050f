"""The ``qponder`` command. Thin: each sub-command lives in ``qponder.commands.<name>`` and calls library code.

Command modules are discovered from the ``qponder.commands`` package (each defines ``register(app)``), so a
stage adds its command without touching this file. Heavy imports (torch, transformers) happen inside commands,
keeping ``qponder --help`` fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys

import typer

from qponder.errors import QponderError

app = typer.Typer(
    name="qponder",
    help="Reasoning-based image quality assessment: distil, train (SFT, GRPO), score, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --help lists commands in pipeline order; modules not named here follow alphabetically.
_ORDER = ["demo", "data", "distill", "train", "score", "eval", "metrics", "serve", "tiny_model"]


def _register_commands() -> None:
    import qponder.commands as pkg

    def key(m):
        return (_ORDER.index(m.name) if m.name in _ORDER else len(_ORDER), m.name)

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=key):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"qponder.commands.{info.name}")
        module.register(app)


_register_commands()


@app.callback()
def _root() -> None:
    """Reasoning-based image quality assessment: distil, train (SFT, GRPO), score, evaluate, serve."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = os.environ.get("QPONDER_LOG", "WARNING").upper()
    logging.basicConfig(level=level if level in logging.getLevelNamesMapping() else "WARNING",
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # hub retry chatter; our error line says enough
    try:
        app(args=argv, prog_name="qponder")
    except QponderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is saved and a re-run resumes", file=sys.stderr)
        return 130
    except SystemExit as e:  # typer/click always exit through SystemExit in standalone mode
        if e.code is None:
            return 0
        if e.code == 130:  # typer turns Ctrl-C into a silent Exit(130)
            print("interrupted; finished work is saved and a re-run resumes", file=sys.stderr)
        return e.code if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
