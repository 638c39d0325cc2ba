"""Greedy agreement between backends on the same weights.

Free-running greedy text is the user-visible check, but on random weights the logits are flat
and one rounding difference changes every later token. So each backend is also fed the
reference's tokens (teacher forcing) and compared position by position: top-1 agreement and
the logits' relative error, which do not compound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from backends.engine.prefix_cache import common_prefix
from bench.harness import forced_logits, greedy_tokens

# rule -> (least same-sequence share, least teacher-forced top-1 share, most relative logit error).
# float32 fused attention must reproduce the eager path; half precision and int8 weights round
# differently, and random weights have small top-1 margins, hence the looser bounds.
TOLERANCES: dict[str, tuple[float, float, float]] = {
    "exact": (1.0, 1.0, 1e-3),
    "half": (0.0, 0.85, 0.05),
    "int8": (0.0, 0.6, 0.25),
}


@dataclass(slots=True)
class Reference:
    """The reference backend's greedy tokens and its teacher-forced logits on them."""

    backend: str
    prompts: list[list[int]]
    tokens: list[list[int]]
    logits: list[torch.Tensor]  # per prompt [T, V], float32 on the CPU


@dataclass(slots=True)
class Agreement:
    """How closely one backend follows the reference, and whether that is within its rule."""

    backend: str
    reference: str
    rule: str
    same_sequences: float  # share of prompts whose greedy continuation equals the reference's
    common_prefix: float  # mean share of leading tokens equal to the reference's
    top1: float  # teacher-forced: share of positions with the reference's argmax
    logit_error: float  # teacher-forced: mean ||l - ref|| / ||ref - mean(ref)||
    passed: bool

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return (
            f"{verdict} ({self.rule} vs {self.reference}): same {self.same_sequences:.2f}, "
            f"prefix {self.common_prefix:.2f}, top-1 {self.top1:.3f}, logit err {self.logit_error:.2e}"
        )


def reference_from(backend: str, model: Any, prompts: Sequence[Sequence[int]], tokens: int) -> Reference:
    """Greedy continuations of the prompts under `model`, and its own logits along them."""
    continuations = greedy_tokens(model.core, prompts, tokens)
    logits = [forced_logits(model.backend, p, c) for p, c in zip(prompts, continuations, strict=True)]
    return Reference(backend, [list(p) for p in prompts], continuations, logits)


def compare(model: Any, reference: Reference, rule: str) -> Agreement:
    """Measure `model` against the reference under one of the TOLERANCES rules."""
    tokens = len(reference.tokens[0])
    mine = greedy_tokens(model.core, reference.prompts, tokens)
    same = [a == b for a, b in zip(mine, reference.tokens, strict=True)]
    prefixes = [common_prefix(a, b) / tokens for a, b in zip(mine, reference.tokens, strict=True)]
    top1: list[float] = []
    errors: list[float] = []
    for prompt, continuation, ref in zip(reference.prompts, reference.tokens, reference.logits, strict=True):
        logits = forced_logits(model.backend, prompt, continuation)  # [T, V]
        top1.append((logits.argmax(-1) == ref.argmax(-1)).float().mean().item())
        centred = ref - ref.mean(-1, keepdim=True)
        errors.append(((logits - ref).norm(dim=-1) / centred.norm(dim=-1)).mean().item())
    least_same, least_top1, most_error = TOLERANCES[rule]
    agreement = Agreement(
        backend=model.info.backend,
        reference=reference.backend,
        rule=rule,
        same_sequences=sum(same) / len(same),
        common_prefix=sum(prefixes) / len(prefixes),
        top1=sum(top1) / len(top1),
        logit_error=sum(errors) / len(errors),
        passed=False,
    )
    agreement.passed = (
        agreement.same_sequences >= least_same
        and agreement.top1 >= least_top1
        and agreement.logit_error <= most_error
    )
    return agreement
