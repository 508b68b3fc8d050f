"""CLI sub-commands; every module here defines ``register(app)`` and is picked up by ``qponder.cli``."""
