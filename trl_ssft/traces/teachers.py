"""Teachers for `trl_ssft.traces.generate`: who samples the candidate traces, and how.

A teacher is one model behind one backend (``vllm``: the offline engine in this process; ``openai``: any
OpenAI-compatible chat endpoint), with its sampling settings and K, the number of samples per question.
Teachers come from a YAML/JSON file and/or command-line flags::

    defaults:                  # optional, applied to every teacher below
      samples: 4
      temperature: 0.7
    teachers:
      - name: qwen-local
        backend: vllm
        model: /models/Qwen3-8B
        tensor_parallel_size: 2
        data_parallel_size: 2
        chat_template_kwargs: {enable_thinking: true}
        reasoning_parser: qwen3
      - name: r1-api
        backend: openai
        model: deepseek-reasoner
        base_url: https://api.deepseek.com
        api_key_env: DEEPSEEK_API_KEY
        max_concurrency: 32

Precedence: a command-line flag > the teacher's own entry > the file's ``defaults`` > the built-in default
(`Teacher`'s field defaults). Unknown keys, a backend not in `BACKEND_OPTIONS`, or an option of another
backend (e.g. ``tensor_parallel_size`` on an ``openai`` teacher: set it on the server) are errors that
name the teacher and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

# Options that only one backend reads; everything else in `Teacher` applies to both. The keys are the
# backend registry's names (`trl_ssft.traces.backends.BACKENDS` has the same keys).
BACKEND_OPTIONS: dict[str, frozenset[str]] = {
    "vllm": frozenset({"tensor_parallel_size", "data_parallel_size", "engine_kwargs", "reasoning_parser",
                       "max_in_flight"}),
    "openai": frozenset({"base_url", "api_key_env", "max_concurrency", "timeout", "max_retries"}),
}


@dataclass
class Teacher:
    """One teacher model. Sampling options are per request; ``seed`` seeds each sample (`sample_seed`)."""

    name: str
    backend: str
    model: str
    samples: int = 1  # K: samples per question
    temperature: float | None = 0.7
    top_p: float | None = 0.95
    max_tokens: int | None = None  # None: up to the model's context (vLLM) / the server's default
    seed: int | None = 0  # None: unseeded
    system_prompt: str | None = None  # prepended unless the question's messages start with a system turn
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {enable_thinking: true}
    extra_body: dict = field(default_factory=dict)  # openai: merged into the request body; vllm: SamplingParams
    max_consecutive_failures: int = 32  # stop this teacher after this many failed requests in a row
    # openai backend
    base_url: str | None = None  # None: the client's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str | None = None  # env var holding the key; None: OPENAI_API_KEY, else "EMPTY" (local servers)
    max_concurrency: int = 16
    timeout: float = 600.0  # seconds per request attempt
    max_retries: int = 5  # the openai client's retries (exponential backoff) of connection errors, 408/429/5xx
    # vllm backend
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    engine_kwargs: dict = field(default_factory=dict)  # passed to vllm.LLM (max_model_len, gpu_memory_utilization...)
    reasoning_parser: str | None = None  # a vLLM reasoning parser name (deepseek_r1, qwen3...): splits thinking
    max_in_flight: int = 4096  # requests queued in the engine at once (bounded memory on large question sets)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        where = f"teacher {self.name!r}"
        if self.backend not in BACKEND_OPTIONS:
            raise ValueError(f"{where}: unknown backend {self.backend!r}; choose one of {sorted(BACKEND_OPTIONS)}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"{where}: 'model' must be a non-empty string (a local dir or the served model name)")
        defaults = teacher_defaults()
        for backend, names in BACKEND_OPTIONS.items():
            if backend == self.backend:
                continue
            for name in sorted(names):
                if getattr(self, name) != defaults[name]:
                    raise ValueError(f"{where} (backend {self.backend}): option {name!r} applies to the {backend} "
                                     f"backend only" + (" (set it on the server, e.g. `vllm serve --reasoning-parser`)"
                                                        if self.backend == "openai" else ""))
        for name in ("samples", "max_concurrency", "tensor_parallel_size", "data_parallel_size", "max_in_flight",
                     "max_consecutive_failures"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name!r} must be an integer >= 1, got {value!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise ValueError(f"{where}: 'max_tokens' must be an integer >= 1 or null, got {self.max_tokens!r}")
        for name in ("chat_template_kwargs", "extra_body", "engine_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{where}: {name!r} must be a mapping, got {getattr(self, name)!r}")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise ValueError(f"{where}: the environment variable {self.api_key_env!r} (api_key_env) is not set")

    def api_key(self) -> str:
        """The key for the openai client: `api_key_env`'s value, else OPENAI_API_KEY, else "EMPTY"."""
        if self.api_key_env:
            return os.environ[self.api_key_env]
        return os.environ.get("OPENAI_API_KEY") or "EMPTY"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


TEACHER_KEYS = frozenset(f.name for f in dataclasses.fields(Teacher))


def teacher_defaults() -> dict:
    """{option: built-in default} of `Teacher` (``name``, ``backend``, ``model`` have none)."""
    return {f.name: _default(f) for f in dataclasses.fields(Teacher)}


def make_teacher(entry: dict, defaults: dict | None = None, overrides: dict | None = None,
                 where: str = "teacher") -> Teacher:
    """A `Teacher` from a config `entry`, on top of `defaults` and under `overrides` (set flags).

    ``name`` defaults to the model's last path part; ``backend`` to ``openai`` when a ``base_url`` is
    given, else ``vllm``."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping of options, got {entry!r}")
    merged = {**(defaults or {}), **entry, **(overrides or {})}
    unknown = sorted(set(merged) - TEACHER_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; known: {sorted(TEACHER_KEYS)}")
    if not merged.get("model"):
        raise ValueError(f"{where}: 'model' is missing")
    merged.setdefault("backend", "openai" if merged.get("base_url") else "vllm")
    merged.setdefault("name", str(merged["model"]).rstrip("/").rsplit("/", 1)[-1])
    return Teacher(**merged)


def load_teachers(path: str | None, overrides: dict | None = None, flag_teacher: dict | None = None) -> list[Teacher]:
    """Teachers from a YAML/JSON file (a list of entries, or ``{defaults: {...}, teachers: [...]}``) and/or
    one teacher given by flags (`flag_teacher`, e.g. ``{"model": ..., "base_url": ...}``); `overrides`
    (the set sampling flags) apply to all. Names must be unique."""
    teachers: list[Teacher] = []
    if path:
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f)  # YAML is a superset of JSON
        defaults, entries = {}, data
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"defaults", "teachers"})
            if unknown or "teachers" not in data:
                raise ValueError(f"{path}: expected a list of teachers or a mapping with 'teachers' (and optional "
                                 f"'defaults'); got keys {sorted(data)}")
            defaults, entries = data.get("defaults") or {}, data["teachers"]
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: 'teachers' must be a non-empty list")
        for i, entry in enumerate(entries):
            teachers.append(make_teacher(entry, defaults, overrides, where=f"{path}, teachers[{i}]"))
    if flag_teacher:
        teachers.append(make_teacher(flag_teacher, None, overrides, where="the teacher given by flags"))
    if not teachers:
        raise ValueError("no teacher: give --teachers FILE and/or --model (with --base-url for an endpoint)")
    names = [t.name for t in teachers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"teacher names must be unique, repeated: {dupes} (set 'name' on each)")
    return teachers


def sample_seed(seed: int | None, question_id: str, sample_index: int) -> int | None:
    """The seed of one sample: a hash of (teacher seed, question id, sample index), so that a sample
    does not depend on which others were generated before it (resume, batch layout). None: unseeded."""
    if seed is None:
        return None
    digest = hashlib.sha256(json.dumps([seed, question_id, sample_index]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def messages_for(prompt: str | list, system_prompt: str | None) -> list[dict]:
    """Chat messages for a question: a string becomes one user turn; `system_prompt` is prepended
    unless the messages already start with a system turn (the question's own wins)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages
