"""What the benchmarks time, on the engine core every backend runs under.

Each measurement drives `EngineCore.step()` directly (no HTTP, no event loop), so the numbers
are the engine's and the backend's own: sampling, detokenizing and stopping included, as a
served request pays them. Generation is greedy and forced to full length (`ignore_eos`).
"""

from __future__ import annotations

import gc
import importlib.util
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from backends.engine.contract import Seq
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams

BACKENDS = ("hf_eager", "hf_bettertransformer", "hf_int8")


class BackendUnavailable(Exception):
    """A backend cannot run here; the message says why (the benchmark skips it)."""


def load_subject(
    name: str,
    model: str | None,
    dtype: str | None,
    device: str | None,
    max_batch_size: int = 16,
    **options: Any,
) -> Any:
    """`load_model()` with one backend, or BackendUnavailable with a one-line reason."""
    from backends.library import load_model

    if importlib.util.find_spec(f"backends.{name}") is None:
        raise BackendUnavailable(f"{name}: backends/{name}/ is not in this checkout")
    try:
        return load_model(
            model, backend=name, dtype=dtype, device=device, max_batch_size=max_batch_size, **options
        )
    except Exception as exc:  # any load failure is a reason to skip, reported to the user
        lines = str(exc).strip().splitlines()
        raise BackendUnavailable(f"{name}: {type(exc).__name__}: {lines[0] if lines else ''}") from exc


def free_memory() -> None:
    """Return what a dropped model held, so the next backend starts from the same state."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompt_ids(vocab_size: int, length: int, seed: int) -> list[int]:
    """A fixed pseudo-random prompt of token ids, avoiding the low ids where specials live."""
    rng = random.Random(seed)
    low = min(100, vocab_size // 2)
    return [rng.randrange(low, vocab_size) for _ in range(length)]


def usable_vocab(core: EngineCore) -> int:
    """Ids that both the model and its tokenizer know."""
    return min(core.info.vocab_size, len(core.tokenizer))


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def time_to_first_token(core: EngineCore, prompt: Sequence[int]) -> None:
    """Admit one request and step until its first token: the timed unit of TTFT."""
    request_id = core.add_request(prompt, greedy(1))
    while True:
        result = core.step()
        if request_id in result.failures:
            raise result.failures[request_id]
        if any(o.request_id == request_id and o.choices for o in result.outputs):
            break
    while core.has_work():  # nothing is left with max_tokens=1; this only keeps the core clean
        core.step()


@dataclass(slots=True)
class DecodeRun:
    """Requests that are past their prefill; `finish()` decodes the rest of their tokens."""

    core: EngineCore
    request_ids: list[str]
    max_tokens: int
    tokens: int = 0

    def finish(self) -> int:
        """Step until every request is done; the number of tokens these steps made."""
        pending = set(self.request_ids)
        made = 0
        while pending:
            result = self.core.step()
            if result.failures:
                raise next(iter(result.failures.values()))
            for output in result.outputs:
                made += sum(len(c.token_ids) for c in output.choices)
                if output.finished:
                    pending.discard(output.request_id)
        self.tokens += made
        expected = len(self.request_ids) * self.max_tokens
        if self.tokens != expected:  # full length is what makes random weights a fair stand-in
            raise AssertionError(f"generated {self.tokens} tokens, expected {expected}")
        return made


def start_decode(core: EngineCore, prompts: Sequence[Sequence[int]], max_tokens: int) -> DecodeRun:
    """Admit all prompts together and run their prefill step (untimed setup of a decode run)."""
    if len(prompts) > core.max_batch_size:
        raise ValueError(f"{len(prompts)} sequences do not fit a batch of {core.max_batch_size}")
    run = DecodeRun(core, [core.add_request(p, greedy(max_tokens)) for p in prompts], max_tokens)
    result = core.step()
    if result.failures:
        raise next(iter(result.failures.values()))
    run.tokens = sum(len(c.token_ids) for o in result.outputs for c in o.choices)
    if run.tokens != len(prompts):
        raise AssertionError(f"the prefill step made {run.tokens} tokens for {len(prompts)} prompts")
    return run


def decode_prompts(core: EngineCore, batch: int, length: int) -> list[list[int]]:
    """`batch` different prompts of equal length (no padding, so batches are comparable)."""
    return [prompt_ids(usable_vocab(core), length, seed=1000 + i) for i in range(batch)]


def greedy_tokens(core: EngineCore, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Free-running greedy continuations of several prompts, generated as one batch."""
    ids = [core.add_request(p, greedy(max_tokens)) for p in prompts]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    while core.has_work():
        result = core.step()
        if result.failures:
            raise next(iter(result.failures.values()))
        for output in result.outputs:
            for choice in output.choices:
                tokens[output.request_id].extend(choice.token_ids)
    return [tokens[i] for i in ids]


@torch.inference_mode()
def forced_logits(backend: Any, prompt: Sequence[int], continuation: Sequence[int]) -> torch.Tensor:
    """Next-token logits at each step of a given continuation (teacher forcing), straight through
    the backend contract: [len(continuation), vocab] in float32 on the CPU."""
    seq = Seq(10**9, list(prompt))
    rows = [backend.prefill([seq]).float().cpu()]  # each [1, V]
    try:
        for token in continuation[:-1]:
            seq.token_ids.append(token)
            rows.append(backend.decode([seq]).float().cpu())
    finally:
        backend.release([seq])
    return torch.cat(rows)  # [T, V]


def weight_bytes(backend: Any) -> int | None:
    """Bytes of the model's weights, each shared tensor once (as gpt-fast counts model size)."""
    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return None
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        total += param.numel() * param.element_size()
        scales = getattr(param, "SCB", None)  # bitsandbytes int8 keeps per-row scales beside the weight
        if isinstance(scales, torch.Tensor):
            total += scales.numel() * scales.element_size()
    return total


def copier(device: str, nbytes: int) -> Callable[[], None]:
    """A function that copies `nbytes` between two buffers on `device` and waits for it."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    dst.copy_(src)  # first touch maps the pages

    def copy() -> None:
        dst.copy_(src)
        synchronize(device)

    synchronize(device)
    return copy


def copy_bandwidth(device: str, nbytes: int, repeats: int = 5) -> float:
    """The machine's memory bandwidth in GB/s: the best of `repeats` copies of `nbytes`, counting
    bytes read and written (STREAM's convention)."""
    copy = copier(device, nbytes)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        copy()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9
