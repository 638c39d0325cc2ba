"""The bodies of /health and /livez: what is served, by which backend, and whether it is moving."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Status = Literal["ok", "loading", "draining", "stalled", "failed"]


class FastPathsReport(BaseModel):
    """The backend's speed-ups as really in effect (see backends.engine.contract.FastPaths)."""

    attention: str
    cache: str
    compiled_decode: bool


class HealthReport(BaseModel):
    """The /health body: the status and why, and once loaded what is served, by which backend, where."""

    status: Status
    reason: str | None = None
    model: str | None = None
    backend: str | None = None
    device: str | None = None
    devices: list[str] | None = None
    dtype: str | None = None
    fast_paths: FastPathsReport | None = None


class LivenessReport(BaseModel):
    """The /livez body: "ok" while the process can make progress (loading and draining included)."""

    status: Literal["ok", "stalled", "failed"]
    reason: str | None = None
