"""`evaluate_model`: Q questions x N forking tokens x R rounds of samples, every metric, one report dict.

The data is an ssft-format file (`prompt`, `traces`, optional `answer`, `trace_sources`) or a
prompt/answer file (`.jsonl` / `.json` / `.parquet`), or a list of rows. The rules that move the
numbers (answer equality, missing answers in votes, extraction, the Cons@k estimator) are options,
and the report states which ones it used under ``"rules"`` (see docs/metrics.md).

Generation goes through one function, `_generate`, with two backends: ``hf`` (`inference.generate_ids`)
and ``vllm`` (`trl_ssft.eval.vllm_backend.generate_ids_vllm`, imported only when asked for).
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

from . import metrics as M
from .answers import equality_name, extraction_name, make_equal, make_extract, math_verify_available, normalize_choice
from .inference import SSFTModel, fork_prompt_ids, generate_ids, load_ssft_model
from .modes import pick_classifier, resolve_classifier_name
from .self_choice import resolve_self_choose, self_chosen_report

logger = logging.getLogger(__name__)

PLAIN_LABEL = "sample{i}"
BACKENDS = ("hf", "vllm")
PASS_AT_K_RULE = "unbiased 1 - C(n-c,k)/C(n,k) over all N x R samples of a question (tokens pooled)"
CONS_AT_N_RULE = "one vote per round over one sample of each token, averaged over rounds and questions"


# ---------------------------------------------------------------- data
def read_rows(path: str) -> list[dict]:
    """Rows of a .jsonl / .json / .parquet file as dicts."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    if ext == ".json":
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):  # {"data": [...]} or column-oriented
            data = data.get("data", data)
            if isinstance(data, dict):
                keys = list(data)
                data = [dict(zip(keys, vals)) for vals in zip(*data.values())]
        return list(data)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported extension {ext!r} (use .jsonl, .json or .parquet)")


def normalise_rows(rows: Sequence[dict], prompt_column: str = "prompt", answer_column: str = "answer",
                   chat: str = "auto") -> list[dict]:
    """Rows -> ``{"prompt", "answer", "traces", "trace_sources"}`` (missing fields None).

    `chat`: ``auto`` wraps a plain-string prompt into a user message only for rows without traces
    (prompt/answer data; ssft rows keep their prompt exactly as trained), ``always`` wraps every
    string prompt, ``never`` keeps strings raw.
    """
    out = []
    for k, r in enumerate(rows):
        if prompt_column not in r:
            raise ValueError(f"row {k}: no column {prompt_column!r} (has {sorted(r)}); set --prompt-column")
        p = r[prompt_column]
        has_traces = bool(r.get("traces"))
        if isinstance(p, str) and (chat == "always" or (chat == "auto" and not has_traces)):
            p = [{"role": "user", "content": p}]
        a = r.get(answer_column)
        out.append({"prompt": p, "answer": None if a is None else str(a), "traces": r.get("traces"),
                    "trace_sources": r.get("trace_sources")})
    return out


def _gold_choices(rows: list[dict], choices: str) -> None:
    """Multiple choice: every gold answer becomes its option letter (ValueError when it is none)."""
    for k, row in enumerate(rows):
        if row["answer"] is not None:
            letter = normalize_choice(row["answer"], choices)
            if letter is None:
                raise ValueError(f"row {k}: gold answer {row['answer']!r} is not one of the option letters {choices}")
            row["answer"] = letter


# ---------------------------------------------------------------- rules
@dataclass
class EvalRules:
    """The scoring rules of one evaluation (all of them change reported numbers; see docs/metrics.md).

    math_verify: None = when installed. missing: ``skip`` / ``vote``. extract: ``boxed`` / ``fallback``
    (ignored with `pattern` or `choices`). choices: option letters for multiple choice (e.g. ``ABCD``).
    cons_estimator: ``groups`` / ``first-k``.
    """

    math_verify: bool | None = None
    missing: str = "skip"
    extract: str = "boxed"
    pattern: str | None = None
    choices: str | None = None
    cons_estimator: str = "groups"

    def __post_init__(self) -> None:
        if self.missing not in M.MISSING_RULES:
            raise ValueError(f"missing_answers must be one of {M.MISSING_RULES}, got {self.missing!r}")
        if self.cons_estimator not in M.CONS_ESTIMATORS:
            raise ValueError(f"cons_estimator must be one of {M.CONS_ESTIMATORS}, got {self.cons_estimator!r}")
        if self.math_verify is None and not self.choices and not math_verify_available():
            logger.warning("math_verify is not installed: answers compare as normalised strings, and equivalent "
                           "forms may split votes (pip install 'trl-ssft[eval]')")

    def equal(self) -> Callable[[str, str], bool]:
        return make_equal(self.math_verify, self.choices)

    def extractor(self) -> Callable[[str], str | None]:
        return make_extract(self.pattern, self.extract, self.choices)

    def describe(self) -> dict:
        """The rules as the report records them."""
        return {"equality": equality_name(self.math_verify, self.choices), "missing_answers": self.missing,
                "extraction": extraction_name(self.pattern, self.extract, self.choices),
                "cons_estimator": self.cons_estimator, "cons_at_n": CONS_AT_N_RULE, "pass_at_k": PASS_AT_K_RULE}


# ---------------------------------------------------------------- generation
def suppress_fork_tokens_default(state: dict) -> bool:
    """Whether evaluation forbids the forking tokens after the forking position by default: as the model was
    trained, i.e. when its ssft_state.json has ``gfpo.suppress_fork_tokens: true`` (GFPO rollouts without them)."""
    return bool((state.get("gfpo") or {}).get("suppress_fork_tokens"))


def _generate(sm: SSFTModel, prompts: Sequence[Sequence[int]], *, n: int = 1, backend: str = "hf",
              model_dir: str | None = None, progress: bool = False, **gen_kw) -> list[list[list[int]]]:
    """The one generation call of an evaluation: `n` samples of each prompt (ids) -> [len(prompts)][n] ids.

    gen_kw: max_new_tokens, temperature, top_p, greedy, seed, batch_size, suppress_ids (token ids never
    generated; None: none). ``backend="vllm"`` calls
    `trl_ssft.eval.vllm_backend.generate_ids_vllm(model_dir, prompts, n=..., ...)`.
    """
    if backend == "vllm":
        try:
            from .vllm_backend import generate_ids_vllm
        except ImportError as e:
            raise ImportError(f"backend 'vllm' needs trl_ssft.eval.vllm_backend and the vllm package ({e}); "
                              "use backend='hf'") from e
        if model_dir is None:
            raise ValueError("backend 'vllm' needs the model as a directory path")
        kw = {k: gen_kw[k] for k in ("temperature", "top_p", "max_new_tokens", "seed", "greedy")}
        return generate_ids_vllm(model_dir, [list(p) for p in prompts], n=n, suppress_ids=gen_kw.get("suppress_ids"),
                                 **kw)
    if backend != "hf":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    flat = [p for p in prompts for _ in range(n)]
    bar = _progress_bar(len(flat), progress, "generating")
    out = generate_ids(sm.model, sm.tokenizer, flat, progress=bar.update if bar else None, **gen_kw)
    if bar:
        bar.close()
    return [out[j * n: (j + 1) * n] for j in range(len(prompts))]


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr)


@dataclass
class _Plan:
    labels: list[str]        # one per slot: the forking tokens, or sample1..N without tokens
    tokens: list[str]
    use_fork_tokens: bool
    pass1_token: str
    rounds: int
    greedy: bool


def _plan(sm: SSFTModel, fork_tokens, use_fork_tokens, num_plain_samples, pass1_token, rounds, greedy,
          temperature) -> _Plan:
    tokens = list(fork_tokens or sm.fork_tokens)
    if use_fork_tokens is None:
        use_fork_tokens = sm.state.get("assignment") != "none"
    if greedy or temperature == 0:
        greedy, rounds = True, 1
    if use_fork_tokens:
        labels = tokens
    else:
        labels = [PLAIN_LABEL.format(i=i + 1) for i in range(num_plain_samples or len(tokens))]
    if pass1_token is None:
        pass1_token = sm.pass1_token if (use_fork_tokens and sm.pass1_token in labels) else labels[0]
    if pass1_token not in labels:
        raise ValueError(f"pass1 token {pass1_token!r} is not one of {labels}")
    return _Plan(labels, tokens, bool(use_fork_tokens), pass1_token, rounds, greedy)


def _sample(sm: SSFTModel, rows: list[dict], plan: _Plan, gen: dict) -> dict:
    """Generate, decode and extract: arrays [Q, N, R] of texts, answers, lengths (and the flat ids)."""
    n = len(plan.labels)
    prompts = []
    for row in rows:
        per = fork_prompt_ids(sm.tokenizer, row["prompt"], plan.tokens if plan.use_fork_tokens else None)
        prompts += per if plan.use_fork_tokens else per * n
    outs = _generate(sm, prompts, n=plan.rounds, **gen)
    shape = (len(rows), n, plan.rounds)
    texts, lengths = np.empty(shape, dtype=object), np.zeros(shape)
    for j, samples in enumerate(outs):
        for r, ids in enumerate(samples):
            texts[j // n, j % n, r] = sm.tokenizer.decode(ids, skip_special_tokens=True)
            lengths[j // n, j % n, r] = len(ids)
    return {"texts": texts, "lengths": lengths}


def _accuracy(answers, correct, gold, plan: _Plan, rules: EvalRules, cons_k, pass_k) -> dict:
    """Pass@1 (per token), Cons@N, Cons@k, Pass@k. A k above the N x R samples of a question gets None."""
    if not any(g is not None for g in gold):
        return {"pass1": None, "pass1_per_token": None, "cons_at_n": None, "cons_at_k": None, "pass_at_k": None}
    equal, total = rules.equal(), len(plan.labels) * plan.rounds
    p1 = M.pass1_per_token(correct)
    return {
        "pass1": float(p1[plan.labels.index(plan.pass1_token)]),
        "pass1_per_token": {t: float(v) for t, v in zip(plan.labels, p1)},
        "cons_at_n": M.cons_at_n(answers, gold, equal, rules.missing),
        "cons_at_k": {str(k): M.cons_at_k(answers, gold, k, equal, rules.cons_estimator, rules.missing)
                      if k <= total else None for k in cons_k},
        "pass_at_k": {str(k): M.pass_at_k_dataset(correct, k) if k <= total else None for k in pass_k},
    }


def _modes_report(modes, labels: list[str], classifier: str, mode_names: list[str]) -> dict:
    table = M.token_mode_table(modes, mode_names)
    cons = M.token_consistency(modes)
    return {
        "classifier": classifier,
        "names": mode_names + ["other"],
        "table": {t: dict(zip(mode_names + ["other"], map(int, row))) for t, row in zip(labels, table)},
        "distinct_modes_per_question": M.distinct_per_question(modes),
        "token_majority_mode": dict(zip(labels, M.token_majority_modes(modes))),
        "token_consistency": {t: float(v) for t, v in zip(labels, cons)},
        "mean_consistency": float(cons.mean()),
    }


def _self_chosen(sm: SSFTModel, rows: list[dict], plan: _Plan, strategy: str, rules: EvalRules, gen: dict,
                 classify, keep_samples: bool) -> dict:
    """The model's own token: N self-chosen samples per question and round (`self_choice.self_chosen_report`)."""
    return self_chosen_report(sm, rows, plan.tokens, plan.rounds, strategy, rules, gen, classify, keep_samples)


def _samples_list(s: dict, labels: list[str]) -> list[dict]:
    q, n, r_ = s["texts"].shape
    return [{"question": qi, "token": labels[i], "round": r, "self_chosen": False, "text": s["texts"][qi, i, r],
             "answer": s["answers"][qi, i, r], "correct": bool(s["correct"][qi, i, r]), "mode": s["modes"][qi, i, r]}
            for qi in range(q) for r in range(r_) for i in range(n)]


def _score(s: dict, rows: list[dict], rules: EvalRules, classify) -> None:
    """Add answers, correctness and modes [Q, N, R] to the sample arrays `s`."""
    extract, equal = rules.extractor(), rules.equal()
    texts = s["texts"]
    s["answers"] = np.empty(texts.shape, dtype=object)
    s["modes"] = np.empty(texts.shape, dtype=object)
    s["correct"] = np.zeros(texts.shape, dtype=bool)
    for (qi, i, r), text in np.ndenumerate(texts):
        ans = extract(text)
        gold = rows[qi]["answer"]
        s["answers"][qi, i, r] = ans
        s["correct"][qi, i, r] = gold is not None and ans is not None and equal(gold, ans)
        s["modes"][qi, i, r] = classify(text, rows[qi]) if classify else None


def evaluate_model(
    model,
    data,
    *,
    fork_tokens: Sequence[str] | None = None,
    use_fork_tokens: bool | None = None,
    num_plain_samples: int | None = None,
    pass1_token: str | None = None,
    rounds: int = 1,
    temperature: float = 0.7,
    top_p: float = 0.95,
    greedy: bool = False,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    max_questions: int | None = None,
    answer_pattern: str | None = None,
    math_verify: bool | None = None,
    missing_answers: str = "skip",
    extract: str = "boxed",
    choices: str | None = None,
    cons_estimator: str = "groups",
    mode_classifier: str = "auto",
    self_choose: str | None = None,
    cons_k: Sequence[int] = (),
    pass_k: Sequence[int] = (1,),
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    chat: str = "auto",
    backend: str = "hf",
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    keep_samples: bool = False,
    suppress_fork_tokens: bool | None = None,
) -> dict:
    """Generate Q x N x R samples and compute every metric; returns the report dict.

    model: a model dir (full or adapter) or an `inference.SSFTModel`. data: a file path or a list of
    rows. N is the number of forking tokens (`fork_tokens`, default from the model's
    `ssft_state.json`). A model trained with ``ssft_assignment: none`` (no token, SFT-mixed), or
    ``use_fork_tokens=False``, gets N = `num_plain_samples` (default: its number of forking tokens)
    samples of the bare prompt per round, reported as slots ``sample1..N``. Greedy decoding makes
    rounds identical, so it runs one round. `self_choose` (``argmax`` / ``sample``) also evaluates
    the model's own token choice (`self_choice`: N self-chosen samples per question and round, Pass@1,
    Cons@N, each question's choices); None: ``sample`` for a model whose ssft_state.json has
    ``pass1_choice: "self"`` (GFPO), else off; ``"none"``: off. `keep_samples`: ``report["samples"]``
    lists every sample (forced tokens, then the self-chosen ones with ``"self_chosen": True``).
    `suppress_fork_tokens`: forbid the forking tokens in continuations after a forced or self-chosen
    token (never in plain samples); None: as the model was trained, i.e. on for a GFPO model whose
    ssft_state.json says ``gfpo.suppress_fork_tokens`` (`suppress_fork_tokens_default`), else off.

    Scoring rules (recorded in ``report["rules"]``, explained in docs/metrics.md):
    `math_verify` (None: when installed, else normalised strings); `missing_answers` ``skip``
    (default: a sample without an answer is not a vote) or ``vote`` (the authors' rule: it is a vote,
    can win, and scores 0); `extract` ``boxed`` (default) or ``fallback`` (the authors' order; a
    regex `answer_pattern` overrides both); `choices` (e.g. ``"ABCD"``: multiple choice, the option
    letter is extracted, voted and compared); `cons_estimator` ``groups`` (default: mean over disjoint
    groups of k) or ``first-k`` (one vote over the first k samples, the paper's Cons@32). A k of
    `cons_k` / `pass_k` above the N x R samples per question is reported as None.
    `backend`: ``hf`` (transformers generate) or ``vllm`` (`trl_ssft.eval.vllm_backend`; `model` must
    be a directory).
    """
    t0 = time.time()
    rules = EvalRules(math_verify, missing_answers, extract, answer_pattern, choices, cons_estimator)
    self_choose = resolve_self_choose(model, self_choose)
    load = backend != "vllm" or self_choose is not None
    sm = model if isinstance(model, SSFTModel) else load_ssft_model(model, device=device, dtype=dtype,
                                                                      fork_tokens=fork_tokens, load_model=load)
    rows = normalise_rows(read_rows(data) if isinstance(data, str) else list(data), prompt_column,
                          answer_column, chat)[:max_questions]
    if choices:
        _gold_choices(rows, choices)
    plan = _plan(sm, fork_tokens, use_fork_tokens, num_plain_samples, pass1_token, rounds, greedy, temperature)
    if suppress_fork_tokens is None:
        suppress_fork_tokens = suppress_fork_tokens_default(sm.state)
    gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=plan.greedy,
               batch_size=batch_size, seed=seed, backend=backend, progress=progress,
               model_dir=model if isinstance(model, str) else None,
               suppress_ids=list(sm.fork_token_ids) if (suppress_fork_tokens and plan.use_fork_tokens) else None)
    classify, mode_names = pick_classifier(mode_classifier, rows)
    s = _sample(sm, rows, plan, gen)
    _score(s, rows, rules, classify)
    report = _report(model, data, sm, rows, plan, rules, s, gen, cons_k, pass_k)
    if classify is not None:
        report["modes"] = _modes_report(s["modes"], plan.labels, resolve_classifier_name(mode_classifier, rows),
                                        mode_names)
    if self_choose and plan.use_fork_tokens:
        report["self_chosen"] = _self_chosen(sm, rows, plan, self_choose, rules, gen, classify, keep_samples)
    report["seconds"] = round(time.time() - t0, 2)
    if keep_samples:  # forced samples, then the self-chosen ones ("self_chosen": True)
        report["samples"] = _samples_list(s, plan.labels) + (report.get("self_chosen") or {}).pop("samples", [])
    return report


def _report(model, data, sm: SSFTModel, rows, plan: _Plan, rules: EvalRules, s: dict, gen: dict, cons_k,
            pass_k) -> dict:
    """The report dict without modes and self-chosen tokens (added by `evaluate_model`)."""
    labels, answers = plan.labels, s["answers"]
    gold = [row["answer"] for row in rows]
    greedy = plan.greedy
    report: dict = {
        "model": model if isinstance(model, str) else getattr(sm.model, "name_or_path", None),
        "dataset": data if isinstance(data, str) else None,
        "num_questions": len(rows), "rounds": plan.rounds, "tokens": labels,
        "uses_fork_tokens": plan.use_fork_tokens, "pass1_token": plan.pass1_token,
        "samples_per_question": len(labels) * plan.rounds,
        "temperature": None if greedy else gen["temperature"], "top_p": None if greedy else gen["top_p"],
        "greedy": greedy, "max_new_tokens": gen["max_new_tokens"], "seed": gen["seed"], "backend": gen["backend"],
        "suppress_fork_tokens": gen["suppress_ids"] is not None,
        "rules": rules.describe(),
        "has_answers": any(g is not None for g in gold),
    }
    report.update(_accuracy(answers, s["correct"], gold, plan, rules, cons_k, pass_k))
    report["answered"] = {t: float(v) for t, v in zip(labels, (answers != None).mean(axis=(0, 2)))}  # noqa: E711
    report["mean_new_tokens"] = {t: float(v) for t, v in zip(labels, s["lengths"].mean(axis=(0, 2)))}
    report["distinct_answers_per_question"] = M.distinct_answers_per_question(answers, rules.equal())
    report["modes"], report["self_chosen"] = None, None
    return report


def quick_eval(model_dir: str, data, max_questions: int = 16, temperature: float = 0.7, rounds: int = 1,
               max_new_tokens: int = 128, mode_classifier: str = "auto", **kwargs) -> dict:
    """A short evaluation for the README demo: prints the table for a just-trained model, returns the report."""
    from .report import print_report

    report = evaluate_model(model_dir, data, max_questions=max_questions, temperature=temperature, rounds=rounds,
                            max_new_tokens=max_new_tokens, mode_classifier=mode_classifier, progress=False,
                            **kwargs)
    print_report(report)
    return report
