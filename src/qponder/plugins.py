"""Plugins: packages that add teacher backends or named datasets to qponder without the core importing them.

The core names a teacher backend (``teacher.backend: rule``) or a dataset (``data: demo``) by string and looks it up
in its registries (``qponder.distill.backends.register_backend``, ``qponder.data.registry.register_dataset_loader``).
A name it does not know makes it load the plugins once: every ``qponder.plugins`` entry point is a function that
registers its names when called. The CPU demo's stand-ins (``qponder.demo``) plug in this way, and so can a user's
package, e.g. in its ``pyproject.toml``::

    [project.entry-points."qponder.plugins"]
    my_teacher = "my_package.qponder_plugin:register"
"""

from __future__ import annotations

import threading

from qponder.errors import QponderError

ENTRY_POINT_GROUP = "qponder.plugins"

_lock = threading.RLock()  # a register function may look names up itself
_loaded = False


def load_plugins() -> None:
    """Call every installed plugin's register function, once per process. A plugin that fails is named."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        from importlib.metadata import entry_points

        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                ep.load()()
            except Exception as e:
                raise QponderError(f"qponder plugin {ep.name!r} ({ep.value}) failed to load: "
                                   f"{type(e).__name__}: {e}") from e
