"""The HTTP endpoints, one ``APIRouter`` per concern: ``meta`` (/health, /v1/models), ``score`` (/v1/score),
``chat`` (/v1/chat/completions) and ``page`` (the web page at /, a client of /v1/score). ``qponder.serve.app.create_app`` includes them; their shared state is
``qponder.serve.state.ServeState``.
"""
