"""ladle's HTTP layer: an OpenAI-compatible ASGI app over the backends' engine."""

from __future__ import annotations
