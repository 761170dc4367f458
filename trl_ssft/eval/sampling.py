"""The samples of an evaluation: per-sample seeds, the samples file (written as samples finish, read back by
``--resume``), one generation call over the HF and vLLM backends, and the progress bar.

A sample is identified by its key ``(question, slot, round, self_chosen)``: `slot` is the forking token's index
(or the plain sample's), `self_chosen` says the model picked the token itself. Its RNG seed depends only on the
evaluation's seed and that key (`sample_seed`), and each backend samples a prompt with its own generator (HF:
`inference.RowSampler`; vLLM: a per-request seed), so a sample does not depend on the order samples are generated
in, on the batch it shares, or on an interruption: a resumed evaluation generates exactly the missing samples and
reports what an uninterrupted run with the same seed reports.

The samples file (`SampleStore`): line 1 is ``{"header": {...}}``, the settings that make two runs' samples
interchangeable (model, prompts, layout, sampling, seed, backend); every further line is one finished sample
(key, token, text, number of new tokens), appended and flushed as its batch (HF) or request (vLLM) finishes.
Resuming checks the header, drops a last line cut off by the interruption, and skips the samples already there.
When the evaluation ends, the file is rewritten (atomically) with each sample's answer, correctness and mode.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .inference import SSFTModel, generate_ids

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
Key = tuple[int, int, int, bool]  # (question, slot, round, self_chosen)


@dataclass(frozen=True)
class Request:
    """One sample to generate: its key, the token (or plain-sample label) it starts with, the prompt ids, the seed."""

    key: Key
    token: str
    prompt: list[int]
    seed: int


def sample_seed(seed: int, question: int, slot: int, rnd: int, self_chosen: bool = False) -> int:
    """The RNG seed of one sample: a function of (seed, question, slot, round, self_chosen) only (31 bits)."""
    state = np.random.SeedSequence([int(seed), int(question), int(slot), int(rnd), int(self_chosen)])
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)


def _key(rec: dict) -> Key:
    return int(rec["question"]), int(rec["slot"]), int(rec["round"]), bool(rec["self_chosen"])


class SampleStore:
    """The samples file of one evaluation (see the module docstring); `path` None keeps samples in memory only."""

    def __init__(self, path: str | None, header: dict, resume: bool = False):
        self.path, self.header = path, header
        self.done: dict[Key, dict] = {}
        self.resumed = 0
        if path is None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume and os.path.exists(path):
            self._load()
        else:
            if os.path.exists(path):
                logger.warning("%s exists: starting a new samples file (pass resume / --resume to continue it)", path)
            with open(path, "w") as f:
                f.write(json.dumps({"header": header}) + "\n")

    def _load(self) -> None:
        with open(self.path) as f:
            text = f.read()
        lines = text.split("\n")
        complete, partial = lines[:-1], lines[-1]  # a last line without newline was cut off by the interruption
        if not complete:
            raise ValueError(f"cannot resume from {self.path}: no header line")
        old = json.loads(complete[0]).get("header")
        diff = sorted(k for k in set(old or {}) | set(self.header) if (old or {}).get(k) != self.header.get(k))
        if diff:
            detail = "; ".join(f"{k}: file {(old or {}).get(k)!r}, this run {self.header.get(k)!r}" for k in diff[:6])
            raise ValueError(f"cannot resume from {self.path}: it was written with other settings ({detail}). Rerun "
                             "with the same settings, or without --resume to start afresh")
        for n, line in enumerate(complete[1:], start=2):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}, line {n}: not a JSON sample ({e}); the file is damaged") from e
            self.done[_key(rec)] = rec
        self.resumed = len(self.done)
        if partial:  # drop the cut-off line so that appends start on a fresh line
            with open(self.path, "w") as f:
                f.write("\n".join(complete) + "\n")
        logger.info("resuming %s: %d samples already there", self.path, self.resumed)

    def add(self, records: Sequence[dict]) -> None:
        """Keep `records` and append them to the file in one write (flushed)."""
        for rec in records:
            self.done[_key(rec)] = rec
        if self.path is not None and records:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(rec) + "\n" for rec in records))
                f.flush()

    def finalize(self, records: Sequence[dict]) -> None:
        """Rewrite the file with `records` (e.g. with answers added), atomically."""
        if self.path is None:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({"header": self.header}) + "\n")
            f.write("".join(json.dumps(rec) + "\n" for rec in records))
        os.replace(tmp, self.path)


class Progress:
    """A tqdm bar over samples (samples/s) with the generated tokens per second as its postfix; no-op when off."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str = "generating"):
        self.bar, self.tokens, self.t0 = None, 0, time.time()
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="sample", file=sys.stderr)

    def update(self, samples: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(samples)
            self.bar.set_postfix_str(f"{self.tokens / max(time.time() - self.t0, 1e-9):.1f} tok/s", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _generate(sm: SSFTModel, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
              on_done: Callable[[list[tuple[int, list[int]]]], None], *, backend: str = "hf",
              model_dir: str | None = None, batch_size: int = 32, greedy: bool = False, max_new_tokens: int = 256,
              temperature: float = 0.7, top_p: float = 0.95, suppress_ids: Sequence[int] | None = None,
              vllm_options: dict | None = None, **_unused) -> None:
    """The one generation call of an evaluation: continue every prompt (ids) with its own seed; `on_done` receives
    ``[(prompt index, new ids), ...]`` as prompts finish (HF: per batch, in order; vLLM: as requests finish).

    ``backend="vllm"`` streams through `trl_ssft.eval.vllm_backend.stream_ids_vllm(model_dir, ...)` with
    `vllm_options` (tensor / data parallel sizes, engine options)."""
    if backend == "vllm":
        try:
            from .vllm_backend import stream_ids_vllm
        except ImportError as e:
            raise ImportError(f"backend 'vllm' needs trl_ssft.eval.vllm_backend and the vllm package ({e}); "
                              "use backend='hf'") from e
        if model_dir is None:
            raise ValueError("backend 'vllm' needs the model as a directory path")
        stream_ids_vllm(model_dir, [list(p) for p in prompts], seeds=list(seeds), on_done=on_done, greedy=greedy,
                        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        suppress_ids=suppress_ids, **(vllm_options or {}))
        return
    if backend != "hf":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for s in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[s: s + batch_size]]
        out = generate_ids(sm.model, sm.tokenizer, chunk, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, greedy=greedy, batch_size=len(chunk), seed=None, suppress_ids=suppress_ids,
                           seeds=None if greedy else list(seeds[s: s + batch_size]))
        on_done([(s + k, ids) for k, ids in enumerate(out)])


def run_requests(sm: SSFTModel, requests: Sequence[Request], store: SampleStore, gen: dict,
                 progress: bool = False) -> dict[Key, dict]:
    """Generate every request not in `store` yet, recording each finished sample there; returns key -> record.

    A record: ``question, slot, round, self_chosen, token, text`` (decoded without special tokens) and
    ``new_tokens``."""
    pending = [r for r in requests if r.key not in store.done]
    bar = Progress(len(requests), len(requests) - len(pending), progress and bool(pending))

    def on_done(finished: list[tuple[int, list[int]]]) -> None:
        recs = []
        for j, ids in finished:
            r = pending[j]
            q, slot, rnd, own = r.key
            recs.append({"question": q, "slot": slot, "round": rnd, "self_chosen": own, "token": r.token,
                         "text": sm.tokenizer.decode(ids, skip_special_tokens=True), "new_tokens": len(ids)})
        store.add(recs)
        bar.update(len(recs), sum(rec["new_tokens"] for rec in recs))

    try:
        if pending:
            _generate(sm, [r.prompt for r in pending], [r.seed for r in pending], on_done, **gen)
    finally:
        bar.close()
    missing = [r.key for r in requests if r.key not in store.done]
    if missing:
        raise RuntimeError(f"generation returned no sample for {len(missing)} requests, e.g. {missing[:3]}")
    return {r.key: store.done[r.key] for r in requests}


def fill(records: dict[Key, dict], shape: tuple[int, int, int], self_chosen: bool = False) -> dict:
    """Arrays [Q, N, R] of texts and new-token counts from the records of one kind (forced or self-chosen)."""
    texts, lengths = np.empty(shape, dtype=object), np.zeros(shape)
    for (q, slot, rnd, own), rec in records.items():
        if own == self_chosen:
            texts[q, slot, rnd] = rec["text"]
            lengths[q, slot, rnd] = rec["new_tokens"]
    return {"texts": texts, "lengths": lengths}
