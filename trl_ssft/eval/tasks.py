"""Benchmark presets: the paper's four benchmarks with the paper's protocol (`TASKS`, a registry like
`matching.MODES`; `register_task` adds one).

A `TaskSpec` holds the hub dataset (id, config, split, pinned revision and where the pin comes from, the columns it
reads), the prompt (``ours`` by default; ``authors`` reproduces the authors' lighteval prompt functions, the file
of theirs each follows is named in `AUTHORS_PROMPT_SOURCE`), the answer rule (free-form with ``\\boxed{}``, or
multiple choice with option letters whose order is shuffled with a fixed seed, as simple-evals' GPQA does) and the
protocol defaults (temperature 0.7, top-p 0.95, 32768 new tokens, samples per forking token, which Cons@k /
Pass@k to report). `load_task_rows` reads the hub dataset (``datasets.load_dataset``) or a local copy in the
hub dataset's own schema (``data_files``: .jsonl / .json / .parquet / .csv) and returns evaluation rows
(``{"prompt": [user message], "answer": gold}``). `resolve_settings` merges a task's defaults, the ``authors``
protocol and the caller's explicit settings; `differences` lists every setting that differs from the authors'
evaluation (docs/paper_protocol.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .questions import read_rows

PROMPT_STYLES = ("ours", "authors")
PROTOCOLS = ("ours", "authors")
LETTERS = "ABCD"

# the authors' evaluation: Sheng-J/SSFT, ssft_eval.sh and the vendored lighteval (commit ca2c517)
AUTHORS_PROMPT_SOURCE = {
    "math": "Sheng-J/SSFT lighteval/src/lighteval/tasks/default_prompts.py: aime_prompt_fn, math_500",
    "gpqa": "Sheng-J/SSFT lighteval/src/lighteval/tasks/default_prompts.py: gpqa_instruct",
}
AUTHORS_MATH_PROMPT = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n{question}")
AUTHORS_GPQA_PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}")
OUR_MATH_PROMPT = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
OUR_GPQA_PROMPT = ("{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}\n\nPlease reason step by step, and put the letter "
                   "of your final answer (A, B, C or D) within \\boxed{{}}.")


@dataclass(frozen=True)
class Protocol:
    """Sampling and reporting defaults of a task: the paper's (vLLM, bf16, chat template on)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 32768
    rounds: int = 11  # samples per forking token: 6 tokens x 11 = the authors' 66 samples of Cons@6
    cons_k: tuple[int, ...] = (32,)
    pass_k: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark: where its data is, how a row becomes a prompt and a gold answer, and its protocol."""

    name: str
    title: str
    hub_id: str
    config: str | None
    split: str
    revision: str | None
    revision_source: str  # where the pinned revision was found (or why there is none)
    columns: tuple[str, ...]  # the columns a row must have
    build: Callable[[list[dict], str, int], list[dict]]  # (raw rows, prompt style, choice seed) -> eval rows
    protocol: Protocol = field(default_factory=Protocol)
    choices: str | None = None  # option letters for multiple choice
    authors_task: str = ""  # the authors' lighteval task (`lighteval|<name>|0|0` in ssft_eval.sh)
    notes: tuple[str, ...] = ()  # differences from the authors that no flag removes


def _math_rows(question: str, answer: str) -> Callable[[list[dict], str, int], list[dict]]:
    def build(raw: list[dict], style: str, _seed: int) -> list[dict]:
        template = AUTHORS_MATH_PROMPT if style == "authors" else OUR_MATH_PROMPT
        return [{"prompt": [{"role": "user", "content": template.format(question=r[question])}],
                 "answer": str(r[answer])} for r in raw]

    return build


def gpqa_rows(raw: list[dict], style: str, seed: int) -> list[dict]:
    """GPQA rows: the four options shuffled as simple-evals does (``random.Random(seed)``, one
    ``rng.sample(range(4), 4)`` per row in dataset order, applied to [correct, incorrect 1, 2, 3]); gold = the letter
    the correct answer lands on."""
    rng = random.Random(seed)
    template = AUTHORS_GPQA_PROMPT if style == "authors" else OUR_GPQA_PROMPT
    out = []
    for r in raw:
        perm = rng.sample(range(4), 4)
        options = [r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]]
        shown = dict(zip(LETTERS, (options[i] for i in perm)))
        out.append({"prompt": [{"role": "user", "content": template.format(question=r["Question"], **shown)}],
                    "answer": LETTERS[perm.index(0)]})
    return out


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a benchmark preset (usable as ``task=...`` / ``--task``)."""
    TASKS[spec.name] = spec
    return spec


MATH_COLUMNS = ("problem", "answer")
register_task(TaskSpec(
    "aime24", "AIME 2024", "HuggingFaceH4/aime_2024", "default", "train",
    "2fe88a2f1091d5048c0f36abc874fb997b3dd99a",
    "main's head commit 2fe88a2 'Update README.md' (huggingface.co/datasets/HuggingFaceH4/aime_2024/commits/main), "
    "full hash as pinned by public evaluation code",
    MATH_COLUMNS, _math_rows("problem", "answer"), Protocol(rounds=11), authors_task="aime24_sot6"))
register_task(TaskSpec(
    "aime25", "AIME 2025", "yentinglin/aime_2025", "default", "train",
    "1bdb867fb342dc8d521bb4b03f3d96478bb9a550",
    "the newest of the dataset's commits found in stored hub pages "
    "(huggingface.co/datasets/yentinglin/aime_2025/tree/1bdb867fb342dc8d521bb4b03f3d96478bb9a550)",
    MATH_COLUMNS, _math_rows("problem", "answer"), Protocol(rounds=11), authors_task="aime25_sot6"))
register_task(TaskSpec(
    "math500", "MATH-500", "HuggingFaceH4/MATH-500", "default", "test",
    "ff5b20257d8185524591543f8ff5993951537bb8",
    "main's head commit 'Update README.md' (huggingface.co/datasets/HuggingFaceH4/MATH-500/commits/"
    "ff5b20257d8185524591543f8ff5993951537bb8)",
    MATH_COLUMNS, _math_rows("problem", "answer"), Protocol(rounds=6), authors_task="math_500_sot6",
    notes=("gold answer: the `answer` column; the authors extract it from the `solution` column with lighteval's "
           "expression parser (the same answers for MATH-500's boxed solutions)",)))
register_task(TaskSpec(
    "gpqa_diamond", "GPQA-Diamond", "Idavidrein/gpqa", "gpqa_diamond", "train",
    "633f5ee89ab8ad4522a9f850766b73f62147ffdd",
    "source_revision recorded by a public GPQA-Diamond evaluation manifest "
    "(huggingface.co/datasets/minjaechoi/twla-gpqa30-eval-manifest); the dataset is gated on the hub",
    ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"), gpqa_rows,
    Protocol(rounds=6), choices=LETTERS, authors_task="gpqa:diamond_sot6",
    notes=("choice order: a fixed-seed permutation per question (simple-evals' rule, `--choice-seed`); the authors' "
           "lighteval draws the correct answer's position with Python's unseeded global `random`, so their order "
           "cannot be reproduced",
           "votes: over option letters; the authors' GPQA Cons@N votes over raw texts (a single sample's accuracy, "
           "docs/metrics.md), deliberately not reproduced")))

# The authors' settings for every task (their ssft_eval.sh, the lighteval fork's vLLM model and metrics).
AUTHORS_RULES = {"extract": "fallback", "missing_answers": "vote", "cons_estimator": "first-k"}
LIBRARY_DEFAULTS = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256, "rounds": 1, "cons_k": (),
                    "pass_k": (1,), "extract": "boxed", "missing_answers": "skip", "cons_estimator": "groups",
                    "prompt_style": "ours"}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def resolve_settings(spec: TaskSpec | None, protocol: str, given: Mapping) -> dict:
    """The evaluation's settings: each explicit (not None) value of `given`, else the ``authors`` protocol's
    rule, else the task's protocol default, else the library default (`LIBRARY_DEFAULTS`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    base = dict(LIBRARY_DEFAULTS)
    if spec is not None:
        p = spec.protocol
        base.update(temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_new_tokens, rounds=p.rounds,
                    cons_k=p.cons_k, pass_k=p.pass_k)
    if protocol == "authors":
        base.update(AUTHORS_RULES, prompt_style="authors")
    out = {k: (given[k] if given.get(k) is not None else v) for k, v in base.items()}
    if out["prompt_style"] not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {out['prompt_style']!r}")
    return out


def _load_hub(spec: TaskSpec) -> list[dict]:
    from datasets import load_dataset

    try:
        ds = load_dataset(spec.hub_id, spec.config, split=spec.split, revision=spec.revision)
    except Exception as e:  # offline, gated, renamed: say how to work around it
        raise RuntimeError(f"task {spec.name}: cannot load {spec.hub_id} ({spec.config}, split {spec.split}, revision "
                           f"{spec.revision}): {type(e).__name__}: {e}. Download a copy and pass it with --data-files "
                           "(the hub dataset's own columns: " + ", ".join(spec.columns) + ")") from e
    return ds.to_list()


def load_task_rows(spec: TaskSpec, data_files: str | None = None, prompt_style: str = "ours",
                   choice_seed: int = 0) -> list[dict]:
    """Evaluation rows of a benchmark: ``{"prompt": [user message], "answer": gold}`` per question, from the hub
    (pinned revision) or from `data_files` (a local copy in the hub dataset's schema). A row without one of the
    task's columns raises `ValueError` naming the row and the column."""
    raw = read_rows(data_files) if data_files else _load_hub(spec)
    for k, r in enumerate(raw):
        missing = [c for c in spec.columns if r.get(c) is None]
        if missing:
            src = data_files or spec.hub_id
            raise ValueError(f"task {spec.name}, {src}, row {k}: no column {missing[0]!r} (has {sorted(r)}); the task "
                             f"reads {list(spec.columns)} from the hub dataset's schema")
    return spec.build(raw, prompt_style, choice_seed)


def authors_settings(spec: TaskSpec) -> dict:
    """The authors' evaluation of `spec` (their ``<task>_sot6`` run and, for Pass@1, ``<task>_greedythink1``)."""
    out = {"prompt_style": "authors", "layout": "released", "temperature": 0.7, "top_p": 0.95,
           "max_new_tokens": 32768, "rounds": spec.protocol.rounds, "num_tokens": 6, "pass1_token": "<think1>",
           "backend": "vllm", "equality": "choice-letter" if spec.choices else "math-verify", **AUTHORS_RULES}
    if spec.choices:  # option letters are extracted whatever --extract says
        del out["extract"]
    return out


FLAGS = {"prompt_style": "--prompt-style authors", "layout": "--fork-layout released", "temperature": "--temperature",
         "top_p": "--top-p", "max_new_tokens": "--max-new-tokens", "rounds": "--rounds", "num_tokens": "--fork-tokens",
         "pass1_token": "--pass1-token '<think1>'", "backend": "--backend vllm", "equality": "pip install 'trl-ssft[eval]'",
         "extract": "--extract fallback", "missing_answers": "--missing-answers vote",
         "cons_estimator": "--cons-estimator first-k"}


def differences(spec: TaskSpec, ours: Mapping) -> list[dict]:
    """Every setting of this evaluation (`ours`: the keys of `authors_settings`) that differs from the authors',
    with the flag that matches theirs, then the task's notes (differences no flag removes)."""
    theirs = authors_settings(spec)
    out = [{"setting": k, "ours": ours.get(k), "authors": v, "flag": FLAGS.get(k)}
           for k, v in theirs.items() if k in ours and ours.get(k) != v]
    out.append({"setting": "pass1_run", "ours": "Pass@1 of the Pass@1 token over this run's samples",
                "authors": "a separate run of 32 samples with <think1> (greedythink1 task)",
                "flag": "--fork-tokens '<think1>' --rounds 32"})
    out += [{"setting": "note", "ours": n, "authors": None, "flag": None} for n in spec.notes]
    return out


def format_differences(spec: TaskSpec, diffs: list[dict]) -> str:
    """The differences as printed at the start of an evaluation."""
    lines = [f"{spec.title} ({spec.name}): settings that differ from the authors' evaluation "
             f"(Sheng-J/SSFT ssft_eval.sh, lighteval task {spec.authors_task}):"]
    for d in diffs:
        if d["setting"] == "note":
            lines.append(f"  - {d['ours']}")
        else:
            lines.append(f"  - {d['setting']}: ours {d['ours']!r}, authors {d['authors']!r}"
                         + (f" (to match: {d['flag']})" if d["flag"] else ""))
    return "\n".join(lines)
