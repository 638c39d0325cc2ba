"""For each request far past a bound: its status, the time to answer it, and the pace of 8 streams
meanwhile (their median gap between chunks before the hostile requests, and from the moment each was
sent until a second after its answer).

    python -m reliability.bounds_pace --url http://127.0.0.1:8000 [--pid SERVER_PID]

With --pid, the server's resident memory is read after each answer. Times are one run's, on
whatever machine runs it: compare the gaps before and during, measured together.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from reliability.fuzz_bounds import Oversized, oversized_requests

# max_tokens null: up to the model's context; each stream starts again when it ends.
AFTER = 1.0  # seconds after each answer counted as "during"
STREAM_BODY = {"prompt": "Once upon a time", "max_tokens": None, "ignore_eos": True, "stream": True}


@dataclass(slots=True)
class Streams:
    """Arrival times of every chunk of each background stream."""

    arrivals: list[list[float]] = field(default_factory=list)

    def gaps(self, start: float, end: float) -> list[float]:
        """Gaps between consecutive chunks of a stream, for the chunks that arrived in [start, end].

        Chosen by arrival, not by overlap: overlapping a short window favours long gaps.
        """
        found = []
        for times in self.arrivals:
            for before, after in itertools.pairwise(times):
                if start <= after <= end:
                    found.append(after - before)
        return found


@dataclass(slots=True)
class Row:
    request: Oversized
    status: int
    param: str | None
    seconds: float
    gap_during: float | None
    rss_mib: float | None


async def stream(client: httpx.AsyncClient, times: list[float]) -> None:
    """One stream after another, until cancelled; a gap spans the restart too."""
    while True:
        async with client.stream("POST", "/v1/completions", json=STREAM_BODY) as response:
            if response.status_code != 200:
                raise RuntimeError(f"a stream was refused: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    times.append(time.monotonic())


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def median_ms(gaps: list[float]) -> float | None:
    return statistics.median(gaps) * 1000 if gaps else None


async def measure(url: str, pid: int | None, warmup: float, streams: int) -> tuple[float | None, list[Row]]:
    limits = httpx.Limits(max_connections=streams + 4)
    hostile = oversized_requests()  # encoded before the streams start: the client must not stall them
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        record = Streams([[] for _ in range(streams)])
        tasks = [asyncio.create_task(stream(client, times)) for times in record.arrivals]
        while min(len(times) for times in record.arrivals) < 3:
            failed = [task for task in tasks if task.done()]
            if failed:
                failed[0].result()  # raises what ended it
            await asyncio.sleep(0.1)
        began = time.monotonic()
        await asyncio.sleep(warmup)
        before = median_ms(record.gaps(began, time.monotonic()))
        rows = []
        for request in hostile:
            start = time.monotonic()
            response = await client.post(
                request.path, content=request.body, headers={"Content-Type": "application/json"}
            )
            end = time.monotonic()
            await asyncio.sleep(AFTER)  # a stall shows as a gap that ends after the answer
            param = response.json().get("error", {}).get("param") if response.status_code == 400 else None
            during = median_ms(record.gaps(start, end + AFTER))
            rows.append(Row(request, response.status_code, param, end - start, during, rss_mib(pid)))
        ended = [task for task in tasks if task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if ended:
        print(f"warning: a background stream failed: {ended[0].exception()!r}", file=sys.stderr)
    return before, rows


def table(before: float | None, rows: list[Row]) -> str:
    lines = [
        f"8 streams, median gap between chunks before the hostile requests: {before:.1f} ms"
        if before is not None
        else "no gaps measured before",
        "",
        "| request | body | status | param | answered in | median gap during | server RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        during = f"{row.gap_during:.1f} ms" if row.gap_during is not None else "no chunk"
        rss = f"{row.rss_mib:.0f} MiB" if row.rss_mib is not None else "-"
        lines.append(
            f"| {row.request.name} | {row.request.size / 1e6:.2f} MB | {row.status} | {row.param} "
            f"| {row.seconds * 1000:.0f} ms | {during} | {rss} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, help="the server's process id, to read its resident memory")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of streaming measured before")
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args(argv)
    print(f"server RSS at start: {rss_mib(args.pid) or 0:.0f} MiB" if args.pid else "", end="")
    before, rows = asyncio.run(measure(args.url.rstrip("/"), args.pid, args.warmup, args.streams))
    print()
    print(table(before, rows))
    return 0 if all(row.status == 400 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
