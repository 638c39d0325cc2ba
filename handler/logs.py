"""Logging set-up shared by the HTTP server and the queue worker."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """One plain format for ladle's own logger."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
