"""`evaluate_model`: Q questions x N forking tokens x R rounds of samples, every metric, one report dict.

The questions come from a benchmark preset (``task``: `eval.tasks`, from the hub or a local copy) or from a
file / list of rows (an ssft-format file with `prompt`, `traces`, optional `answer`, `trace_sources`, or a
prompt/answer file). Each prompt continues with the forking token in the model's layout (`trl_ssft.layout`,
recorded in its ssft_state.json). The rules that move the numbers (answer equality, missing answers in votes,
extraction, the Cons@k estimator) are options, and the report states which ones it used under ``"rules"``
(docs/metrics.md); a task run also lists every setting that differs from the authors' evaluation
(``"protocol"``, docs/paper_protocol.md).

Generation: `eval.sampling` (one call over the ``hf`` and ``vllm`` backends, per-sample seeds, the samples file
written as samples finish, ``resume``); the model's own token choice: `eval.self_choice`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from . import metrics as M
from ..layout import tokenize_layout
from .inference import SSFTModel, fork_prompt_ids, load_ssft_model
from .modes import pick_classifier, resolve_classifier_name
from .questions import gold_choices, normalise_rows, read_rows  # noqa: F401  (read_rows re-exported)
from .rules import CONS_AT_N_RULE, PASS_AT_K_RULE, EvalRules, score_samples  # noqa: F401
from .sampling import BACKENDS, Request, SampleStore, fill, run_requests, sample_seed  # noqa: F401
from .self_choice import resolve_self_choose, self_chosen_report, self_chosen_requests
from .tasks import differences, format_differences, get_task, load_task_rows, resolve_settings

PLAIN_LABEL = "sample{i}"


def suppress_fork_tokens_default(state: dict) -> bool:
    """Whether evaluation forbids the forking tokens after the forking position by default: as the model was
    trained, i.e. when its ssft_state.json has ``gfpo.suppress_fork_tokens: true`` (GFPO rollouts without them)."""
    return bool((state.get("gfpo") or {}).get("suppress_fork_tokens"))


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


def _rows(data, spec, data_files, cfg, prompt_column, answer_column, chat, max_questions, choice_seed) -> list[dict]:
    """The evaluation rows: a task's (hub or `data_files`) or `data`'s (a file path or a list of rows)."""
    if spec is not None:
        rows = load_task_rows(spec, data_files, cfg["prompt_style"], choice_seed)
        rows = [{"traces": None, "trace_sources": None, **r} for r in rows]
    elif data is None:
        raise ValueError("give the questions: a data file / list of rows, or a task (--task)")
    else:
        rows = normalise_rows(read_rows(data) if isinstance(data, str) else list(data), prompt_column, answer_column,
                              chat)
    return rows[:max_questions]


def _forced_requests(sm: SSFTModel, rows: list[dict], plan: _Plan, seed: int) -> tuple[list[Request], list]:
    """One request per (question, slot, round): the prompt with its forking token in the model's layout (or the bare
    prompt for plain samples); and every question's N prompts (`forked`, for the self-chosen samples)."""
    forked, requests = [], []
    for q, row in enumerate(rows):
        per = fork_prompt_ids(sm.tokenizer, row["prompt"], plan.tokens if plan.use_fork_tokens else None, sm.layout)
        forked.append(per)
        for r in range(plan.rounds):
            for i, label in enumerate(plan.labels):
                requests.append(Request((q, i, r, False), label, per[i] if plan.use_fork_tokens else per[0],
                                        sample_seed(seed, q, i, r)))
    return requests, forked


def _header(model, sm: SSFTModel, plan: _Plan, gen: dict, requests: Sequence[Request], self_choose) -> dict:
    """What makes two runs' samples interchangeable (checked when resuming)."""
    digest = hashlib.sha256(json.dumps([[list(r.key), r.prompt] for r in requests]).encode()).hexdigest()
    name = model if isinstance(model, str) else getattr(sm.model, "name_or_path", None)
    return {"model": os.path.abspath(name) if isinstance(name, str) and os.path.exists(name) else name,
            "prompts_sha256": digest, "tokens": plan.labels, "layout": sm.layout.layout.describe(),
            "rounds": plan.rounds, "seed": gen["seed"], "greedy": plan.greedy,
            "temperature": None if plan.greedy else gen["temperature"], "top_p": None if plan.greedy else gen["top_p"],
            "max_new_tokens": gen["max_new_tokens"], "backend": gen["backend"],
            "suppress_fork_tokens": gen["suppress_ids"] is not None, "self_choose": self_choose}


def evaluate_model(
    model,
    data=None,
    *,
    task: str | None = None,
    data_files: str | None = None,
    protocol: str = "ours",
    prompt_style: str | None = None,
    choice_seed: int = 0,
    fork_tokens: Sequence[str] | None = None,
    fork_layout=None,
    use_fork_tokens: bool | None = None,
    num_plain_samples: int | None = None,
    pass1_token: str | None = None,
    rounds: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    max_questions: int | None = None,
    answer_pattern: str | None = None,
    math_verify: bool | None = None,
    missing_answers: str | None = None,
    extract: str | None = None,
    choices: str | None = None,
    cons_estimator: str | None = None,
    mode_classifier: str = "auto",
    self_choose: str | None = None,
    cons_k: Sequence[int] | None = None,
    pass_k: Sequence[int] | None = None,
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    chat: str = "auto",
    backend: str = "hf",
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    keep_samples: bool = False,
    suppress_fork_tokens: bool | None = None,
    samples_path: str | None = None,
    resume: bool = False,
    vllm_options: dict | None = None,
) -> dict:
    """Generate Q x N x R samples and compute every metric; returns the report dict.

    model: a model dir (full or adapter) or an `inference.SSFTModel`. data: a file path or a list of rows; or
    `task` (`eval.tasks.TASKS`: ``aime24``, ``aime25``, ``math500``, ``gpqa_diamond``) with the hub dataset at its
    pinned revision, or `data_files` (a local copy in the hub dataset's schema). A task sets the protocol defaults
    (temperature 0.7, top-p 0.95, 32768 new tokens, rounds, Cons@k / Pass@k) and, for GPQA, multiple choice;
    ``protocol="authors"`` also takes the authors' prompt and scoring rules; an explicit argument wins over both
    (None: not set). The report's ``protocol`` block lists every setting that differs from the authors'
    evaluation; it is also printed (stderr) before generation starts. Without a task the defaults are T 0.7, top-p
    0.95, 256 new tokens, 1 round, Pass@1.

    N is the number of forking tokens (`fork_tokens`, default from the model's `ssft_state.json`), each placed in
    the model's forking-token layout (`fork_layout` overrides the state's ``fork_layout``). A model trained with
    ``ssft_assignment: none`` (SFT-mixed), or ``use_fork_tokens=False``, gets N = `num_plain_samples` (default: its
    number of forking tokens) samples of the bare prompt per round, reported as slots ``sample1..N``. Greedy
    decoding makes rounds identical, so it runs one round. `self_choose` (``argmax`` / ``sample``) also evaluates
    the model's own token choice (`self_choice`); None: ``sample`` for a model whose ssft_state.json has
    ``pass1_choice: "self"`` (GFPO), else off; ``"none"``: off. `suppress_fork_tokens`: forbid the forking tokens
    in continuations after a forced or self-chosen token; None: as the model was trained (`gfpo` block).

    Samples: each one's RNG depends only on (seed, question, slot, round) (`sampling.sample_seed`).
    `samples_path`: the samples file, written as samples finish; ``resume=True`` continues an interrupted run from
    it (same settings required; no sample lost or generated twice; the report equals an uninterrupted run's). At
    the end it is rewritten with each sample's answer, correctness and mode. `keep_samples`: also
    ``report["samples"]`` (forced samples, then the self-chosen ones with ``"self_chosen": True``).

    Scoring rules (recorded in ``report["rules"]``, docs/metrics.md): `math_verify` (None: when installed);
    `missing_answers` ``skip`` / ``vote``; `extract` ``boxed`` / ``fallback`` (a regex `answer_pattern`
    overrides both); `choices` (e.g. ``"ABCD"``: multiple choice); `cons_estimator` ``groups`` / ``first-k``. A k
    of `cons_k` / `pass_k` above the N x R samples per question is reported as None. `backend`: ``hf`` or
    ``vllm`` (`model` must be a directory; `vllm_options`: ``tensor_parallel_size``, ``data_parallel_size`` and
    other `vllm.LLM` options).
    """
    t0 = time.time()
    spec = get_task(task) if task else None
    cfg = resolve_settings(spec, protocol, dict(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, rounds=rounds, cons_k=cons_k,
        pass_k=pass_k, extract=extract, missing_answers=missing_answers, cons_estimator=cons_estimator,
        prompt_style=prompt_style))
    choices = choices or (spec.choices if spec is not None else None)
    rules = EvalRules(math_verify, cfg["missing_answers"], cfg["extract"], answer_pattern, choices,
                      cfg["cons_estimator"])
    self_choose = resolve_self_choose(model, self_choose)
    sm = _load(model, fork_layout, device, dtype, fork_tokens, load_model=backend != "vllm" or self_choose is not None)
    rows = _rows(data, spec, data_files, cfg, prompt_column, answer_column, chat, max_questions, choice_seed)
    if choices:
        gold_choices(rows, choices)
    plan = _plan(sm, fork_tokens, use_fork_tokens, num_plain_samples, pass1_token, cfg["rounds"], greedy,
                 cfg["temperature"])
    if suppress_fork_tokens is None:
        suppress_fork_tokens = suppress_fork_tokens_default(sm.state)
    gen = dict(max_new_tokens=cfg["max_new_tokens"], temperature=cfg["temperature"], top_p=cfg["top_p"],
               greedy=plan.greedy, batch_size=batch_size, seed=seed, backend=backend,
               model_dir=model if isinstance(model, str) else None, vllm_options=vllm_options,
               suppress_ids=list(sm.fork_token_ids) if (suppress_fork_tokens and plan.use_fork_tokens) else None)
    proto = _protocol(spec, protocol, cfg, sm, plan, rules, backend, data_files)
    if proto is not None:  # listed before any sample is generated
        print(format_differences(spec, proto["differs_from_authors"]), file=sys.stderr, flush=True)
    classify, mode_names = pick_classifier(mode_classifier, rows)
    own, records, store = _generate_all(model, sm, rows, plan, gen, self_choose, samples_path, resume, progress)
    shape = (len(rows), len(plan.labels), plan.rounds)
    s = fill(records, shape)
    score_samples(s, rows, rules, classify)
    report = _report(model, data, sm, rows, plan, rules, s, gen, cfg["cons_k"], cfg["pass_k"])
    report["protocol"], report["samples_file"] = proto, samples_path
    if classify is not None:
        report["modes"] = _modes_report(s["modes"], plan.labels, resolve_classifier_name(mode_classifier, rows),
                                        mode_names)
    if own:
        report["self_chosen"] = self_chosen_report(rows, plan.tokens, plan.rounds, self_choose, rules, own[1], own[2],
                                                   fill(records, shape, self_chosen=True), classify, True)
    samples = _samples_list(s, plan.labels) + ((report.get("self_chosen") or {}).pop("samples", []))
    store.finalize(samples)
    report["seconds"] = round(time.time() - t0, 2)
    if keep_samples:  # forced samples, then the self-chosen ones ("self_chosen": True)
        report["samples"] = samples
    return report


def _load(model, fork_layout, device, dtype, fork_tokens, load_model: bool) -> SSFTModel:
    """The `SSFTModel` of `model` (a dir, or an `SSFTModel` given), with `fork_layout` overriding its layout."""
    if isinstance(model, SSFTModel):
        return model if fork_layout is None else dataclasses.replace(
            model, layout=tokenize_layout(model.tokenizer, fork_layout))
    return load_ssft_model(model, device=device, dtype=dtype, fork_tokens=fork_tokens, load_model=load_model,
                           fork_layout=fork_layout)


def _generate_all(model, sm: SSFTModel, rows, plan: _Plan, gen: dict, self_choose, samples_path, resume, progress):
    """Every sample of the evaluation (forced tokens, then self-chosen ones) through the samples file:
    ``(self-chosen (requests, picks, probs) or None, key -> record, the store)``."""
    requests, forked = _forced_requests(sm, rows, plan, gen["seed"])
    own = self_chosen_requests(sm, rows, forked, plan.tokens, plan.rounds, self_choose, gen["seed"]) \
        if self_choose and plan.use_fork_tokens else None
    everything = requests + (own[0] if own else [])
    store = SampleStore(samples_path, _header(model, sm, plan, gen, everything, self_choose), resume)
    if store.resumed:
        print(f"resuming {samples_path}: {store.resumed} of {len(everything)} samples already there", file=sys.stderr)
    return own, run_requests(sm, everything, store, gen, progress), store


def _protocol(spec, protocol, cfg, sm: SSFTModel, plan: _Plan, rules: EvalRules, backend, data_files) -> dict | None:
    """The report's ``protocol`` block of a task run: the task's dataset, our settings, the authors' differences."""
    if spec is None:
        return None
    ours = {"prompt_style": cfg["prompt_style"], "layout": sm.layout.layout.name, "temperature": cfg["temperature"],
            "top_p": cfg["top_p"], "max_new_tokens": cfg["max_new_tokens"], "rounds": plan.rounds,
            "num_tokens": len(plan.labels) if plan.use_fork_tokens else 0, "pass1_token": plan.pass1_token,
            "backend": backend, "equality": rules.describe()["equality"], "extract": cfg["extract"],
            "missing_answers": cfg["missing_answers"], "cons_estimator": cfg["cons_estimator"]}
    return {"task": spec.name, "protocol": protocol, "authors_task": spec.authors_task,
            "dataset": {"hub_id": spec.hub_id, "config": spec.config, "split": spec.split, "revision": spec.revision,
                        "data_files": data_files},
            "settings": ours, "differs_from_authors": differences(spec, ours)}


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


def _samples_list(s: dict, labels: list[str]) -> list[dict]:
    q, n, r_ = s["texts"].shape
    return [{"question": qi, "token": labels[i], "round": r, "slot": i, "self_chosen": False,
             "text": s["texts"][qi, i, r], "answer": s["answers"][qi, i, r], "correct": bool(s["correct"][qi, i, r]),
             "mode": s["modes"][qi, i, r], "new_tokens": int(s["lengths"][qi, i, r])}
            for qi in range(q) for r in range(r_) for i in range(n)]


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
        "fork_layout": sm.layout.layout.describe() if plan.use_fork_tokens else None,
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
