"""The Transformers model runner shared by the HF backends: a dynamic, left-padded batch cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from backends.engine.contract import FastPaths, ModelInfo, Seq
from backends.errors import InvalidRequestError
from backends.runner import loading
from backends.runner.batch_cache import BatchCache, StagedCache, row_kv

log = logging.getLogger("ladle.backend")

# Batches whose lengths differ by more than 2x plus this many columns decode as separate cohorts.
COHORT_SLACK = 256


class TransformersRunner:
    """Runs any Transformers causal or seq2seq LM; sequences join and leave the batch between steps."""

    name: str  # each backend that runs on it names itself (a class attribute of its subclass)

    def __init__(self, model: Any, tokenizer: Any, model_name: str = "model") -> None:
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.device = next(model.parameters()).device
        devices = sorted({str(p.device) for p in model.parameters()})
        self.info = ModelInfo(
            name=model_name,
            context_length=loading.context_length(model, tokenizer),
            vocab_size=int(model.get_output_embeddings().weight.shape[0]),
            eos_token_ids=loading.eos_token_ids(model, tokenizer),
            is_encoder_decoder=self.is_encoder_decoder,
            decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
            bos_token_id=tokenizer.bos_token_id,
            backend=self.name,
            device=str(self.device),
            devices=tuple(devices),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            created=int(time.time()),
            fast_paths=FastPaths(attention=attention_implementation(model)),
        )
        self.pad_id = _pad_id(model, tokenizer)
        # Decoders that derive positions from the cache length (BART and kin) cannot share a
        # left-padded batch: their sequences run in cohorts of equal length instead.
        decoder = model.get_decoder() if self.is_encoder_decoder else None
        self.aligned_only = decoder is not None and hasattr(decoder, "embed_positions")
        self.batches: list[BatchCache] = []
        self.staged: dict[int, StagedCache] = {}  # seq id -> its cache while prefilled in chunks

    # -- the contract ---------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, seqs: Sequence[Seq]) -> torch.Tensor:
        """Run new sequences' prompts as one left-padded batch and add them to the running batch."""
        if self.is_encoder_decoder:
            logits, batch = self._prefill_seq2seq(seqs)
        else:
            logits, batch = self._prefill_causal(seqs)
        self._adopt(batch)
        return logits

    def _adopt(self, batch: BatchCache) -> None:
        """Merge a newly prefilled batch into a running one (or keep it as a cohort of its own)."""
        for running in self.batches:
            if self._joins(running, batch):
                running.merge(batch)
                break
        else:
            self.batches.append(batch)

    def _joins(self, running: BatchCache, batch: BatchCache) -> bool:
        """Whether a new batch merges into a running one.

        Cohorts of very different lengths stay apart: left-padding 8 short rows to a 3,000-token
        newcomer would copy and attend 3,000 columns for every row at every step, where a second
        forward per step over the newcomer alone costs far less.
        """
        if self.aligned_only:
            return running.length == batch.length and not running.padded
        short, long = sorted((running.length, batch.length))
        return long <= 2 * short + COHORT_SLACK

    @torch.inference_mode()
    def decode(self, seqs: Sequence[Seq]) -> torch.Tensor:
        """One token for each sequence, in one forward over the batch (or one per cohort)."""
        ids = [s.seq_id for s in seqs]
        if sorted(ids) != sorted(sid for b in self.batches for sid in b.seq_ids):
            raise RuntimeError("decode takes every live sequence: release the others first")
        if len(self.batches) == 1:
            return self._decode_batch(self.batches[0], seqs)
        row_of = {sid: i for i, sid in enumerate(ids)}
        out: torch.Tensor | None = None
        for batch in self.batches:
            members = [seqs[row_of[sid]] for sid in batch.seq_ids]
            logits = self._decode_batch(batch, members)
            if out is None:
                out = logits.new_empty((len(seqs), logits.shape[-1]))
            out[torch.tensor([row_of[s.seq_id] for s in members], device=logits.device)] = logits
        assert out is not None
        return out

    def _decode_batch(self, batch: BatchCache, seqs: Sequence[Seq]) -> torch.Tensor:
        batch.select([s.seq_id for s in seqs])
        input_ids = torch.tensor([[s.token_ids[-1]] for s in seqs], device=self.device)  # [B, 1]
        mask = batch.attention_mask(1).to(self.device)  # [B, L + 1]
        if self.is_encoder_decoder:
            out = self.model(
                encoder_outputs=(batch.encoder_states,),
                attention_mask=batch.encoder_mask,
                decoder_input_ids=input_ids,
                decoder_attention_mask=mask,
                cache=batch.cache,
                use_cache=True,
            )
        else:
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=batch.positions().to(self.device),
                cache=batch.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits: torch.Tensor = out.logits[:, -1, :]  # [B, V]
        return logits

    def fork(self, parent: Seq, children: Sequence[Seq]) -> None:
        """Copy the parent's cache row once for each child."""
        for batch in self.batches:
            if parent.seq_id in batch.seq_ids and children:
                ids = batch.seq_ids
                batch.select(ids + [parent.seq_id] * len(children))
                # select() names rows by seq id; the copies take the children's ids afterwards.
                batch.seq_ids = ids + [c.seq_id for c in children]

    def release(self, seqs: Sequence[Seq]) -> None:
        """Drop the rows of these sequences."""
        gone = {s.seq_id for s in seqs}
        for batch in self.batches:
            keep = [sid for sid in batch.seq_ids if sid not in gone]
            if keep and len(keep) < len(batch):
                batch.select(keep)
        self.batches = [b for b in self.batches if any(sid not in gone for sid in b.seq_ids)]
        for sid in gone:
            self.staged.pop(sid, None)

    # -- staged prefill (chunks on top of a cached prefix) ---------------------------------------

    @torch.inference_mode()
    def begin(self, seq: Seq, prefix: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Open a staging cache for a new sequence, seeded with its cached prefix's KV."""
        if seq.seq_id in self.staged:
            raise RuntimeError(f"sequence {seq.seq_id} is already staged")
        self.staged[seq.seq_id] = StagedCache(prefix)

    @torch.inference_mode()
    def extend(self, seq: Seq, count: int, all_logits: bool = False) -> torch.Tensor:
        """Run the next `count` tokens of a staged sequence; logits [1, V], or [count, V] with all_logits."""
        staged = self.staged[seq.seq_id]
        start = staged.length
        if count < 1 or start + count > len(seq.token_ids):
            raise ValueError(f"cannot run {count} tokens from position {start} of {len(seq.token_ids)}")
        ids = torch.tensor([seq.token_ids[start : start + count]], device=self.device)  # [1, C]
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones((1, start + count), dtype=torch.long, device=self.device),
            position_ids=torch.arange(start, start + count, device=self.device)[None, :],
            cache=staged.cache,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
        )
        staged.length = start + count
        logits: torch.Tensor = out.logits[0]  # [C or 1, V]
        return logits

    @torch.inference_mode()
    def commit(self, seq: Seq) -> None:
        """Merge a fully prefilled staged sequence into the decode batch."""
        staged = self.staged.pop(seq.seq_id)
        self._adopt(BatchCache(staged.cache, [seq.seq_id], [0]))

    def export(self, seq: Seq, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the KV of positions start..end-1 of a live or staged sequence, per layer."""
        staged = self.staged.get(seq.seq_id)
        if staged is not None:
            return staged.kv(start, end)
        for batch in self.batches:
            if seq.seq_id in batch.seq_ids:
                return row_kv(batch, seq.seq_id, start, end)
        raise RuntimeError(f"sequence {seq.seq_id} has no cache")

    def cached_tokens(self) -> int:
        """Positions held by live and staged sequences, padding excluded."""
        live = sum(b.positions_held for b in self.batches)
        return live + sum(s.length for s in self.staged.values())

    @torch.inference_mode()
    def score(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits at every prompt position [S, V], for echoed prompt logprobs."""
        if self.is_encoder_decoder:
            raise InvalidRequestError(
                "echo with logprobs is not supported for encoder-decoder models", "echo"
            )
        ids = torch.tensor([list(token_ids)], device=self.device)
        logits: torch.Tensor = self.model(input_ids=ids, use_cache=False).logits[0]  # [S, V]
        return logits

    def warm_up(self) -> None:
        """Nothing to prepare: the eager decode step runs as it is (backends that compile it override this)."""

    # -- prefill paths --------------------------------------------------------------------------

    def _left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        width = max(len(r) for r in rows)
        pad = [width - len(r) for r in rows]
        ids = torch.tensor(
            [[self.pad_id] * p + r for p, r in zip(pad, rows, strict=True)], device=self.device
        )
        mask = torch.tensor(
            [[0] * p + [1] * len(r) for p, r in zip(pad, rows, strict=True)], device=self.device
        )
        return ids, mask, pad  # [N, S], [N, S], [N]

    def _prefill_causal(self, seqs: Sequence[Seq]) -> tuple[torch.Tensor, BatchCache]:
        from transformers import DynamicCache

        ids, mask, pad = self._left_padded([list(s.token_ids) for s in seqs])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [N, S]
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :], BatchCache(cache, [s.seq_id for s in seqs], pad)

    def _prefill_seq2seq(self, seqs: Sequence[Seq]) -> tuple[torch.Tensor, BatchCache]:
        from transformers import DynamicCache, EncoderDecoderCache

        prompts = [list(s.encoder_ids or []) for s in seqs]
        width = max(len(p) for p in prompts)
        enc_ids = torch.tensor([p + [self.pad_id] * (width - len(p)) for p in prompts], device=self.device)
        enc_mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts], device=self.device)
        encoder_states = self.model.get_encoder()(
            input_ids=enc_ids, attention_mask=enc_mask
        ).last_hidden_state
        dec_ids, dec_mask, pad = self._left_padded([list(s.token_ids) for s in seqs])
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.model(
            encoder_outputs=(encoder_states,),
            attention_mask=enc_mask,
            decoder_input_ids=dec_ids,
            decoder_attention_mask=dec_mask,
            cache=cache,
            use_cache=True,
        )
        batch = BatchCache(cache, [s.seq_id for s in seqs], pad, encoder_states, enc_mask)
        return out.logits[:, -1, :], batch


def attention_implementation(model: Any) -> str:
    """The attention implementation really set on the model (Transformers may fall back from the one asked)."""
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


def _pad_id(model: Any, tokenizer: Any) -> int:
    for value in (
        tokenizer.pad_token_id,
        getattr(model.config, "pad_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            return value
    return 0
