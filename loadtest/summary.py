"""The short summary of a load test: per user count, TTFT p50/p95, inter-token gap p50/p99 and the
worst gap, output tokens/s, failures. Every gap between two chunks of a stream is one sample.

Computed from the locustfile's per-request samples when there are any (exact values, the
yardstick's percentile method), else from Locust's stats CSV (whose percentiles Locust rounds
to two significant digits above 100 ms).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class LevelSummary:
    """One run at a fixed number of users."""

    users: int
    requests: int
    failures: int  # unfinished requests included
    unfinished: int  # still running when the run's stop timeout ended it
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    output_tokens: int
    duration_s: float
    output_tokens_per_s: float | None
    source: str  # "samples" or "csv"
    without_done: int = 0  # complete streams that ended without data: [DONE]
    itl_p99_ms: float | None = None
    itl_max_ms: float | None = None  # the worst gap between two chunks of any stream

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None without data."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def from_samples(users: int, samples: Sequence[dict[str, Any]]) -> LevelSummary:
    """Exact summary from per-request samples: tokens/s is completed tokens over the span from
    the first request's start to the last one's end."""
    ok = [s for s in samples if not s.get("error")]
    gaps = _gaps(ok)
    tokens = sum(int(s.get("tokens") or 0) for s in ok)
    if samples:
        span = max(s["start"] + s["latency_s"] for s in samples) - min(s["start"] for s in samples)
    else:
        span = 0.0
    return LevelSummary(
        users=users,
        requests=len(samples),
        failures=len(samples) - len(ok),
        unfinished=sum(1 for s in samples if str(s.get("error", "")).startswith("unfinished")),
        ttft_p50_ms=_ms(percentile([s["ttft_s"] for s in ok if "ttft_s" in s], 50)),
        ttft_p95_ms=_ms(percentile([s["ttft_s"] for s in ok if "ttft_s" in s], 95)),
        itl_p50_ms=_ms(percentile(gaps, 50)),
        output_tokens=tokens,
        duration_s=span,
        output_tokens_per_s=tokens / span if span > 0 else None,
        source="samples",
        without_done=sum(1 for s in ok if s.get("note") == "no data: [DONE]"),
        itl_p99_ms=_ms(percentile(gaps, 99)),
        itl_max_ms=_ms(max(gaps)) if gaps else None,
    )


def _gaps(samples: Sequence[dict[str, Any]]) -> list[float]:
    """Every inter-chunk gap; a sample from before gaps were recorded counts its mean once."""
    gaps: list[float] = []
    for s in samples:
        if "gaps_s" in s:
            gaps += s["gaps_s"]
        elif "itl_s" in s:
            gaps.append(s["itl_s"])
    return gaps


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def from_stats_csv(users: int, path: Path, duration_s: float) -> LevelSummary:
    """Summary from Locust's <prefix>_stats.csv (rows by name; METRIC rows hold the metrics)."""
    with path.open(newline="") as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    requests = [r for (kind, name), r in rows.items() if kind not in ("METRIC", "") and name != "Aggregated"]
    ttft = rows.get(("METRIC", "ttft_ms"), {})
    itl = rows.get(("METRIC", "itl_ms"), {})
    tokens_row = rows.get(("METRIC", "output_tokens"), {})
    tokens = round(_float(tokens_row, "Request Count") * _float(tokens_row, "Average Content Size"))
    return LevelSummary(
        users=users,
        requests=sum(int(_float(r, "Request Count")) for r in requests),
        failures=sum(int(_float(r, "Failure Count")) for r in requests),
        unfinished=0,  # Locust's CSV does not see requests cut off at the end
        ttft_p50_ms=_opt(ttft, "50%"),
        ttft_p95_ms=_opt(ttft, "95%"),
        itl_p50_ms=_opt(itl, "50%"),
        output_tokens=tokens,
        duration_s=duration_s,
        output_tokens_per_s=tokens / duration_s if duration_s > 0 else None,
        source="csv",
        itl_p99_ms=_opt(itl, "99%"),
        itl_max_ms=_opt(itl, "Max Response Time"),
    )


def markdown(title: str, facts: Sequence[str], levels: Sequence[LevelSummary]) -> str:
    """The summary file: a title, one line of facts each, and one table row per user count."""
    lines = [f"# {title}", "", *[f"- {fact}" for fact in facts], ""]
    lines.append(
        "| users | requests | failures | TTFT p50 (ms) | TTFT p95 (ms) | ITL p50 (ms) | ITL p99 (ms) "
        "| worst gap (ms) | output tok/s |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in levels:
        cells = [
            str(level.users),
            str(level.requests),
            f"{level.failures} ({level.unfinished} unfinished)" if level.unfinished else str(level.failures),
            _cell(level.ttft_p50_ms),
            _cell(level.ttft_p95_ms),
            _cell(level.itl_p50_ms),
            _cell(level.itl_p99_ms),
            _cell(level.itl_max_ms),
            _cell(level.output_tokens_per_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    odd = [
        f"{level.without_done} of {level.requests} at {level.users} users"
        for level in levels
        if level.without_done
    ]
    if odd:
        lines += ["", f"Streams that ended without `data: [DONE]`, timed as complete: {'; '.join(odd)}."]
    return "\n".join(lines) + "\n"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _float(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key) or 0.0)
    except ValueError:
        return 0.0


def _opt(row: dict[str, str], key: str) -> float | None:
    value = row.get(key)
    if value in (None, "", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
