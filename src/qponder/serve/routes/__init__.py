"""The HTTP endpoints, one ``APIRouter`` per concern: ``meta`` (/health, /v1/models), ``score`` (/v1/score) and
``chat`` (/v1/chat/completions). ``qponder.serve.app.create_app`` includes them; their shared state is
``qponder.serve.state.ServeState``.
"""
