"""The package's shape: the core never reaches the CPU demo's stand-ins (``qponder.demo``) or the CLI; the demo plugs
in only through the registries a user's plugin also uses."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qponder

PKG = Path(qponder.__file__).parent
# Layers on top of the core: they may import anything; nothing in the core may import them.
TOP = ("qponder.demo", "qponder.commands", "qponder.cli", "qponder.__main__")


def _module_name(path: Path, pkg: Path = PKG) -> str:
    parts = path.relative_to(pkg.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, pkg: Path = PKG) -> set[str]:
    """Every module an import statement in ``path`` names, at any depth (function-local imports included)."""
    mod = _module_name(path, pkg)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}  # `from qponder import demo`
    return out


def _is_top(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TOP)


def core_modules() -> list[Path]:
    return [p for p in sorted(PKG.rglob("*.py")) if not _is_top(_module_name(p))]


def test_the_core_never_imports_the_demo_or_the_cli():
    core = core_modules()
    assert len(core) > 30 and any(p.name == "pipeline.py" for p in core)  # the walk really sees the core
    bad = {f"{p.relative_to(PKG.parent)} imports {name}"
           for p in core for name in _imports(p) if _is_top(name)}
    assert not bad, "\n".join(sorted(bad))


# The core's layers, top to bottom (ARCHITECTURE.md): a module may import its own layer and those below.
LAYERS = (
    ("distill", "train", "evaluate", "serve", "api"),
    ("rewards", "judge", "report"),
    ("infer", "infer_vllm", "metrics", "video"),
    ("models", "data", "prompts", "parsing", "openai_compat", "config"),
    ("io", "errors", "plugins"),
)
LAYER_OF = {name: i for i, row in enumerate(LAYERS) for name in row}


def _unit(module: str) -> str:
    """``qponder.distill.pipeline`` -> ``distill``: the package or top-level module a name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_core_modules_import_only_their_layer_or_below():
    units = {_unit(_module_name(p)) for p in core_modules()} - {"qponder"}
    assert units == set(LAYER_OF), f"a core module without a layer (add it here and to ARCHITECTURE.md): {units}"
    up = set()
    for p in core_modules():
        here = _unit(_module_name(p))
        for name in _imports(p):
            there = _unit(name)
            if name.startswith("qponder.") and there in LAYER_OF and here in LAYER_OF \
                    and LAYER_OF[there] < LAYER_OF[here]:
                up.add(f"{p.relative_to(PKG.parent)} ({LAYERS[LAYER_OF[here]][0]} layer) imports {name}")
    assert not up, "\n".join(sorted(up))


def test_the_import_walk_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "qponder" / "distill"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from qponder.demo.data import load_demo_samples\nfrom ..demo import register\n"
                 "from .. import commands\n")
    names = _imports(f, pkg=tmp_path / "qponder")
    assert {"qponder.demo.data", "qponder.demo", "qponder.commands"} <= names
    assert all(_is_top(n) for n in ("qponder.demo.data", "qponder.demo", "qponder.commands"))
    assert not _is_top("qponder.demonstration") and not _is_top("qponder.distill")


def test_demo_names_resolve_through_the_plugin_entry_point():
    """``rule`` and ``demo`` are found by name in a fresh process that never imported qponder.demo itself."""
    code = ("import sys\n"
            "from qponder.distill.backends import backend_class\n"
            "from qponder.data.registry import dataset_loader\n"
            "assert 'qponder.demo' not in sys.modules\n"
            "print(backend_class('rule').__module__, dataset_loader('demo') is not None, "
            "dataset_loader('labels.csv'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["qponder.demo.teacher", "True", "None"]


def test_unknown_backend_names_every_registered_one():
    from qponder.distill.backends import backend_class
    from qponder.errors import QponderError

    with pytest.raises(QponderError, match=r"unknown teacher backend 'vlm72b'; use local, openai or rule"):
        backend_class("vlm72b")


def test_nothing_cites_files_outside_the_repository():
    """A maintainer has only this repository: code, tests, recipes and docs cite public sources or the repository's
    own files, never a file in the "shared" folder of the workspace it was written in."""
    root = Path(__file__).resolve().parents[1]
    needle = re.compile(r"(?<![\w./-])" + "shared" + "/")  # split, so this file does not cite it itself
    files = [p for d in ("src", "tests", "benchmarks", "recipes") for p in sorted((root / d).rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    files += sorted(root.glob("*.md"))
    hits = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images and other binary fixtures
            continue
        hits += [f"{p.relative_to(root)}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                 if needle.search(line)]
    assert not hits, "\n".join(hits)
