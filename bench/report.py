"""Benchmark results per backend: a Markdown table, a PNG chart and a JSON-ready dict."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from loadtest.run import machine


def machine_description(device: str) -> str:
    """One line naming the processor (or GPU) that ran the benchmark."""
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return f"{machine()}, {torch.get_num_threads()} torch threads"


@dataclass(slots=True)
class BackendResult:
    """What one backend measured. Times are medians over the timed rounds."""

    backend: str
    dtype: str = ""
    ttft_ms: dict[int, float] = field(default_factory=dict)  # prompt length -> ms
    tokens_per_s: dict[int, float] = field(default_factory=dict)  # concurrent sequences -> decode tok/s
    weight_bytes: int | None = None
    load_s: float | None = None
    peak_memory_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    def bandwidth_gbps(self, batch: int) -> float | None:
        """Weight bytes x decode steps per second: the memory bandwidth decoding achieved."""
        rate = self.tokens_per_s.get(batch)
        if rate is None or not self.weight_bytes:
            return None
        return self.weight_bytes * rate / batch / 1e9


@dataclass(slots=True)
class BenchReport:
    """One run: where it ran, what model, and each backend's result or reason for skipping."""

    model: str
    device: str
    dtype: str
    decode_tokens: int
    machine: str = ""
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M %Z"))
    load_average: str = field(default_factory=lambda: load_average_now())
    copy_gbps: float | None = None
    results: dict[str, BackendResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def result(self, backend: str) -> BackendResult:
        return self.results.setdefault(backend, BackendResult(backend))

    def finish(self) -> None:
        """Note the load average at the end of the run next to the one at its start (once)."""
        if " at end" not in self.load_average:
            self.load_average = f"{self.load_average} at start, {load_average_now()} at end"

    def headline(self) -> str:
        copy = f"{self.copy_gbps:.1f} GB/s" if self.copy_gbps else "not measured"
        return (
            f"{self.model} on {self.machine} ({self.device}, {self.dtype}); {self.date}; "
            f"load average {self.load_average}; decode {self.decode_tokens} tokens; "
            f"measured copy bandwidth {copy} (read + write)"
        )

    def markdown(self) -> str:
        """The comparison table, one row per backend, then the skipped backends with reasons."""
        lengths = sorted({n for r in self.results.values() for n in r.ttft_ms})
        batches = sorted({b for r in self.results.values() for b in r.tokens_per_s})
        head = ["dtype"] + [f"TTFT {n} (ms)" for n in lengths] + [f"tok/s x{b}" for b in batches]
        head += [f"GB/s x{b}" for b in batches] + ["weights (MB)"]
        lines = [f"_{self.headline()}_", "", "| backend | " + " | ".join(head) + " |"]
        lines.append("|---" * (len(head) + 1) + "|")
        for r in self.results.values():
            cells = [r.dtype or self.dtype] + [_num(r.ttft_ms.get(n)) for n in lengths]
            cells += [_num(r.tokens_per_s.get(b)) for b in batches]
            cells += [self._bandwidth_cell(r, b) for b in batches]
            cells.append(_num(r.weight_bytes / 1e6 if r.weight_bytes else None))
            lines.append(f"| {r.backend} | " + " | ".join(cells) + " |")
        lines += [f"\n- {name}: skipped: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines) + "\n"

    def _bandwidth_cell(self, result: BackendResult, batch: int) -> str:
        gbps = result.bandwidth_gbps(batch)
        if gbps is None:
            return "-"
        share = f" ({100 * gbps / self.copy_gbps:.0f}%)" if self.copy_gbps else ""
        return f"{_num(gbps)}{share}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, result in self.results.items():
            data["results"][name]["bandwidth_gbps"] = {
                b: result.bandwidth_gbps(b) for b in sorted(result.tokens_per_s)
            }
        return data

    def chart(self, path: Path) -> Path:
        """A PNG of TTFT, decode tokens/s and achieved bandwidth per backend."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.results)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
        _bars(
            axes[0],
            names,
            {
                f"{n}-token prompt": [self.results[b].ttft_ms.get(n) for b in names]
                for n in sorted({n for r in self.results.values() for n in r.ttft_ms})
            },
        )
        axes[0].set_title("time to first token (ms, lower is better)")
        batches = sorted({b for r in self.results.values() for b in r.tokens_per_s})
        _bars(
            axes[1], names, {_seqs(b): [self.results[n].tokens_per_s.get(b) for n in names] for b in batches}
        )
        axes[1].set_title("decode tokens/s (higher is better)")
        _bars(axes[2], names, {_seqs(b): [self.results[n].bandwidth_gbps(b) for n in names] for b in batches})
        if self.copy_gbps:
            axes[2].axhline(
                self.copy_gbps, color="black", linestyle="--", label="measured copy (read + write)"
            )
            axes[2].legend(fontsize=8)
        axes[2].set_title("weight bytes x decode steps/s (GB/s)")
        fig.suptitle(f"{self.model} · {self.machine} · {self.dtype} · {self.date}", fontsize=10)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _bars(ax: Any, names: list[str], series: dict[str, list[float | None]]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(names))]
        heights = [v or 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=label)
        ax.bar_label(bars, labels=[_num(v) for v in values], fontsize=7)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))], names, fontsize=8)
    ax.legend(fontsize=8)


def _seqs(batch: int) -> str:
    return f"{batch} sequence{'s' if batch > 1 else ''}"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def load_average_now() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"
