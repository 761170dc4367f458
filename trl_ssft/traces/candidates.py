"""The candidates file: one JSON line per generated sample, appended as each finishes; resumable.

The schema (the contract between `generate` and the trace builder) is in `trl_ssft.traces.generate`'s
module docstring. This module owns the file: building a line (`make_record`), reading it back
(`read_candidates`), and `CandidatesFile`, which repairs a torn last line, says which samples are
already there, and appends new lines (write + flush per line: a process killed with SIGKILL loses only
the samples in flight, and at most one partial last line, which the next run drops).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

REQUIRED_KEYS = ("question_id", "prompt", "answer", "teacher", "sample_index", "thinking", "response",
                 "finish_reason", "error")


def make_record(question: Any, teacher: str, sample_index: int, *, response: str = "", thinking: str | None = None,
                finish_reason: str = "error", error: str | None = None, usage: dict | None = None,
                model: str | None = None) -> dict:
    """One candidates line for sample `sample_index` of `question` (a `generate.Question`) by `teacher`.

    A failed request: ``error`` set, ``response`` "", ``thinking`` None, ``finish_reason`` "error"."""
    rec = {"question_id": question.question_id, "prompt": question.prompt, "answer": question.answer,
           "teacher": teacher, "sample_index": int(sample_index), "thinking": thinking,
           "response": response if response is not None else "", "finish_reason": finish_reason or "unknown",
           "error": error}
    if usage:
        rec["usage"] = usage
    if model:
        rec["model"] = model
    return rec


def key_of(rec: dict) -> tuple[str, str, int]:
    """(question_id, teacher, sample_index): a sample's identity; at most one line per key."""
    return str(rec["question_id"]), str(rec["teacher"]), int(rec["sample_index"])


def _parse(line: str, path: str, lineno: int) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {lineno}: not valid JSON ({e}); only the last line of a candidates "
                         f"file can be torn (a crash), and it is dropped on resume") from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(rec, dict) or k not in rec]
    if missing:
        raise ValueError(f"{path}, line {lineno}: missing key(s) {missing}; not a candidates file?")
    return rec


def read_candidates(path: str) -> Iterator[dict]:
    """The lines of a candidates file as dicts, in file order (a torn last line is skipped)."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if n == len(lines) and not line.endswith("\n"):
            try:
                yield _parse(line, path, n)
            except ValueError:
                return  # torn by a crash
            continue
        yield _parse(line, path, n)


class CandidatesFile:
    """Append-only writer of a candidates file that knows what is already in it.

    ``cf = CandidatesFile(path); done, failed = cf.open(retry=...)``: `done` holds the keys of lines
    without an error, `failed` those of error lines. Error lines whose key satisfies `retry` (a
    predicate, typically "a sample of a teacher about to run") are removed from the file first
    (rewritten atomically), so that a retried sample still has exactly one line. ``cf.append(rec)``
    writes and flushes one line.
    """

    def __init__(self, path: str):
        self.path = path
        self._f = None

    def open(self, retry: Callable[[tuple], bool] | None = None) -> tuple[set, set]:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        self._repair_tail()
        done, failed, seen = set(), set(), set()
        if os.path.exists(self.path):
            for n, rec in enumerate(read_candidates(self.path), 1):
                key = key_of(rec)
                if key in seen:
                    raise ValueError(f"{self.path}, line {n}: sample {key} appears twice")
                seen.add(key)
                (failed if rec["error"] else done).add(key)
        if retry is not None:
            drop = {key for key in failed if retry(key)}
            if drop:
                self._rewrite_without(drop)
                failed -= drop
        self._f = open(self.path, "a", encoding="utf-8")
        return done, failed

    def _repair_tail(self) -> None:
        """Cut a last line that a crash left without its newline (partial JSON, or even a whole object:
        a line counts only once its newline is written)."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            pos, chunk = size, 1 << 16
            while pos > 0:  # find the last newline, reading backwards
                start = max(0, pos - chunk)
                f.seek(start)
                block = f.read(pos - start)
                i = block.rfind(b"\n")
                if i >= 0:
                    f.truncate(start + i + 1)
                    return
                pos = start
            f.truncate(0)

    def _rewrite_without(self, drop: set) -> None:
        tmp = self.path + ".tmp"
        with open(self.path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                if line.strip() and key_of(json.loads(line)) in drop:
                    continue
                dst.write(line)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)

    def append(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> CandidatesFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
