"""The GPU check's command line, with defaults that depend on the device and the shape."""

from __future__ import annotations

import argparse
import os

import torch

from bench.harness import BACKENDS
from bench.shapes import SHAPES


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,16, got {text!r}")
    return values


def build_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--config", default="llama-1b", help=f"{', '.join(SHAPES)} or a config .json (llama-1b)")
    add("--backends", default=",".join(BACKENDS), help="comma-separated, first is the reference")
    add("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    add("--tokens", type=int, default=64, help="forced decode tokens per run (64)")
    add("--rounds", type=int, default=2, help="timed rounds after one warm-up round (2)")
    add("--agree-tokens", type=int, default=32, help="greedy tokens compared per prompt (32)")
    add("--ttft-lengths", type=_ints, default=[128, 512], help="prompt lengths timed to first token")
    # hf_bettertransformer compiles one decode graph per attended width (256, 1024, 4096, ... up
    # to this cap): 256 is one compile and holds every sequence but a 512-token TTFT prompt.
    add("--max-context", type=int, default=1024, help="hf_bettertransformer's columns per slot (1024)")
    add(
        "--exact-config",
        default=None,
        help="shape of the float32 exactness check when --dtype is not float32 (tiny; 'none' skips)",
    )
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add("--budget-s", type=float, default=400.0, help="start no phase that would end after this (400)")
    add("--http", action=argparse.BooleanOptionalAction, default=True, help="serve and load over HTTP")
    add("--http-backend", default="hf_bettertransformer", help="backend the HTTP server runs")
    add("--http-streams", type=_ints, default=[1, 16], help="concurrent streams, one level each (1,16)")
    add("--http-seconds", type=float, default=10.0, help="closed-loop seconds per level (10)")
    add("--enforce", action=argparse.BooleanOptionalAction, default=None, help="enforce GPU-only targets")
    out = os.path.join(os.environ.get("OUT") or "artifacts", "gpu_check.json")
    add("--out", default=out, help="JSON results path; Markdown beside it ($OUT/gpu_check.json)")
    return parser


def parse_args(argv: list[str] | None, description: str | None = None) -> argparse.Namespace:
    args = build_parser(description).parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    # A float32 run already holds hf_bettertransformer to the exact rule. The float32 check
    # runs on the tiny shape: the same CUDA code paths, and its compile costs seconds.
    args.exact_config = args.exact_config or ("none" if args.dtype == "float32" else "tiny")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.enforce = args.device.startswith("cuda") if args.enforce is None else args.enforce
    return args
