"""Generation from teachers: sample K candidate traces per question from one or more teacher models.

    python -m trl_ssft.traces.generate questions.jsonl -o candidates.jsonl --teachers teachers.yaml
    trl-ssft data generate questions.jsonl -o candidates.jsonl --model /models/Qwen3-8B --samples 4
    trl-ssft data generate questions.jsonl -o candidates.jsonl --base-url http://127.0.0.1:8000/v1 --model m

    from trl_ssft.traces.generate import generate_candidates, load_questions
    from trl_ssft.traces.teachers import Teacher
    summary = generate_candidates(load_questions("questions.jsonl"),
                                  [Teacher(name="r1", backend="openai", model="m", base_url=URL, samples=4)],
                                  "candidates.jsonl")

Teachers (`trl_ssft.traces.teachers`): a local model through vLLM's offline engine (tensor / data
parallel) or any OpenAI-compatible endpoint (`vllm serve`, SGLang, a hosted API), backends in
`trl_ssft.traces.backends`. Questions: a JSONL / JSON / Parquet file, a saved `datasets` folder or a hub
name, one question per row: ``question_id`` (optional: else a stable id from the prompt, ``q`` + 16 hex
digits of its SHA-1), ``prompt`` (a string or chat messages) and an optional ``answer`` (the reference
short answer); other column names through ``--id-field/--prompt-field/--answer-field``.

The candidates file (JSONL, one line per generated sample; the contract with the trace builder)::

    question_id    str          the question's id
    prompt         str | list   the question as given (string or chat messages), without the system prompt
    answer         str | null   the reference short answer, if the question has one
    teacher        str          the teacher's name
    sample_index   int          0 .. K-1 within (question, teacher)
    thinking       str | null   reasoning returned in a separate field: the message's `reasoning_content`
                                (DeepSeek's API) or `reasoning` (vLLM's --reasoning-parser), or the
                                offline engine's split by `reasoning_parser`; null when none was returned
    response       str          the final message content ("" when none)
    finish_reason  str          "stop", "length" (cut by max_tokens), ...; "error" on an error line
    error          str | null   a request that failed for good after the retries (refused, timed out, a
                                4xx such as a prompt too long): the sample is counted, not lost, and
                                generated again only by a run with --retry-failed
    usage          dict         optional: token counts (prompt_tokens, completion_tokens, ...)
    model          str          optional: the model that answered

Each line is written (and flushed) when its sample finishes, in completion order. A run resumes from
the file it finds: a torn last line (a crash mid-write) is dropped, and every (question_id, teacher,
sample_index) already there is skipped, so no sample is generated twice and none is lost; with
``--retry-failed`` the error lines of the teachers being run are removed and those samples generated
again. A key appears at most once in the file. Exit status 0 when every requested sample has a
line without an error, 1 otherwise (the summary says what is missing and how to finish it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checks import SSFTDataError, check_prompt
from .backends import BACKENDS, TeacherFailed
from .candidates import CandidatesFile
from .teachers import Teacher, load_teachers, teacher_defaults

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    question_id: str
    prompt: Any  # str or list of chat messages
    answer: str | None = None


@dataclass(frozen=True)
class Job:
    question: Question
    sample_index: int


def stable_id(prompt: Any) -> str:
    """``q`` + 16 hex digits of the SHA-1 of the prompt's canonical JSON: the same prompt, the same id."""
    return "q" + hashlib.sha1(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def normalize_questions(rows: Iterable[dict], *, id_field: str = "question_id", prompt_field: str = "prompt",
                        answer_field: str = "answer", dataset: str = "questions") -> list[Question]:
    """`Question`s from rows. Bad rows raise `SSFTDataError` naming the row and field; two rows with the
    same explicit id are an error; rows repeating a prompt without an id are dropped (logged, counted)."""
    out, ids, dropped = [], {}, 0
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or prompt_field not in row:
            raise SSFTDataError(i, prompt_field, "missing.", f"give every question a '{prompt_field}' (a string or "
                                "chat messages), or name its column with --prompt-field.", dataset)
        prompt = row[prompt_field]
        check_prompt(prompt, i, dataset)
        qid = row.get(id_field)
        explicit = qid is not None
        if explicit and (isinstance(qid, (dict, list)) or not str(qid).strip()):
            raise SSFTDataError(i, id_field, f"must be a non-empty string or number, got {qid!r}.",
                                "give each question a unique id, or leave the column out.", dataset)
        qid = str(qid) if explicit else stable_id(prompt)
        if qid in ids:
            if explicit:
                raise SSFTDataError(i, id_field, f"{qid!r} repeats row {ids[qid]}'s id.", "make ids unique.", dataset)
            dropped += 1
            continue
        ids[qid] = i
        answer = row.get(answer_field)
        if isinstance(answer, (dict, list)):
            raise SSFTDataError(i, answer_field, f"must be a short answer string, got {answer!r}.", "", dataset)
        out.append(Question(qid, prompt, None if answer is None else str(answer)))
    if dropped:
        logger.warning("%s: dropped %d question(s) repeating an earlier prompt (no %s given)", dataset, dropped,
                       id_field)
    if not out:
        raise SSFTDataError(None, prompt_field, "no questions.", "give at least one row.", dataset)
    return out


def load_questions(path: str, *, split: str = "train", **fields: str) -> list[Question]:
    """`normalize_questions` of the rows of a JSONL / JSON / Parquet file, a saved dataset or a hub name."""
    from ..cli import load_ssft_dataset

    data = load_ssft_dataset(path)
    if split not in data:
        raise ValueError(f"{path}: no split {split!r} (has {sorted(data)})")
    return normalize_questions(data[split], dataset=f"questions ({path})", **fields)


@dataclass
class TeacherSummary:
    teacher: str
    requested: int = 0  # questions x K
    present: int = 0  # already in the file, without error
    failed_before: int = 0  # error lines kept (not retried)
    generated: int = 0  # lines written by this run, without error
    errors: int = 0  # error lines written by this run
    stopped: str | None = None  # why the teacher stopped early

    @property
    def missing(self) -> int:
        return self.requested - self.present - self.failed_before - self.generated - self.errors

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.errors == 0 and self.failed_before == 0


@dataclass
class Summary:
    out_path: str
    teachers: list[TeacherSummary] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(t.complete for t in self.teachers)

    def lines(self) -> list[str]:
        rows = [f"{t.teacher}: {t.requested} requested, {t.present} already there, {t.generated} generated, "
                f"{t.errors} failed now, {t.failed_before} failed before (not retried), {t.missing} missing"
                + (f"; stopped: {t.stopped}" if t.stopped else "") for t in self.teachers]
        if not self.complete:
            rows.append(f"incomplete: run the same command again to generate the missing samples, with "
                        f"--retry-failed to retry the failed ones ({self.out_path})")
        return rows


def generate_candidates(questions: Sequence[Question], teachers: Sequence[Teacher], out_path: str, *,
                        retry_failed: bool = False, progress: bool = True) -> Summary:
    """Sample ``teacher.samples`` candidates per question from each teacher into the candidates file
    `out_path` (see the module docstring), resuming from what it holds. Teachers run one after another;
    a teacher that stops early (`backends.TeacherFailed`) is reported in the summary, the others still run."""
    summary = Summary(out_path)
    qids, samples = {q.question_id for q in questions}, {t.name: t.samples for t in teachers}

    def ours(key: tuple) -> bool:  # a sample this run asks for
        return key[0] in qids and key[1] in samples and key[2] < samples[key[1]]

    with CandidatesFile(out_path) as cf:
        done, failed = cf.open(retry=ours if retry_failed else None)
        for t in teachers:
            s = TeacherSummary(t.name, requested=len(questions) * t.samples)
            s.present = sum(ours(k) for k in done if k[1] == t.name)
            s.failed_before = sum(ours(k) for k in failed if k[1] == t.name)
            jobs = [Job(q, k) for q in questions for k in range(t.samples)
                    if (q.question_id, t.name, k) not in done and (q.question_id, t.name, k) not in failed]
            summary.teachers.append(s)
            logger.info("teacher %s (%s, %s): %d samples to generate, %d already there", t.name, t.backend,
                        t.model, len(jobs), s.present)
            bar = _progress(len(jobs), t.name, progress)

            def emit(rec: dict, s: TeacherSummary = s, bar=bar) -> None:
                cf.append(rec)
                if rec["error"]:
                    s.errors += 1
                else:
                    s.generated += 1
                if bar is not None:
                    bar.update(1)

            try:
                BACKENDS[t.backend](t, jobs, emit)
            except TeacherFailed as e:
                s.stopped = str(e)
                logger.error("%s", e)
            finally:
                if bar is not None:
                    bar.close()
    return summary


def _progress(total: int, name: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"generate [{name}]", dynamic_ncols=True)


# ---------------------------------------------------------------- command line
SAMPLING_FLAGS = ("samples", "temperature", "top_p", "max_tokens", "seed", "system_prompt", "chat_template_kwargs",
                  "extra_body")
FLAG_TEACHER = ("name", "backend", "model", "base_url", "api_key_env", "max_concurrency", "timeout", "max_retries",
                "tensor_parallel_size", "data_parallel_size", "engine_kwargs", "reasoning_parser")


_D = teacher_defaults()  # for the help strings


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `generate` (used by ``trl-ssft data generate`` and ``python -m``)."""
    a = parser.add_argument
    a("questions", help="questions: .jsonl/.json/.parquet, a saved dataset dir or a hub name (question_id, prompt, "
                        "answer)")
    a("-o", "--output", required=True, help="the candidates JSONL file (appended to; resumed from if it exists)")
    a("--teachers", help="YAML/JSON file of teachers (see docs/generate.md)")
    a("--split", default="train", help="split of the questions dataset")
    a("--id-field", default="question_id", help="question id column (missing: a stable id from the prompt)")
    a("--prompt-field", default="prompt", help="prompt column (a string or chat messages)")
    a("--answer-field", default="answer", help="reference answer column (optional)")
    a("--retry-failed", action="store_true", help="generate again the samples whose line has an error")
    a("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("one teacher from flags (with or instead of --teachers)")
    g.add_argument("--model", help="a local model dir (backend vllm) or the served model name (backend openai)")
    g.add_argument("--name", help="the teacher's name in the output (default: the model's last path part)")
    g.add_argument("--backend", choices=sorted(BACKENDS), help="default: openai with --base-url, else vllm")
    g.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    g.add_argument("--max-concurrency", type=int, help=f"openai: requests in flight (default {_D['max_concurrency']})")
    g.add_argument("--timeout", type=float, help=f"openai: seconds per request attempt (default {_D['timeout']:g})")
    g.add_argument("--max-retries", type=int, help=f"openai: retries with backoff per request (default {_D['max_retries']})")
    g.add_argument("--tensor-parallel-size", type=int, help="vllm: GPUs per engine (default 1)")
    g.add_argument("--data-parallel-size", type=int, help="vllm: engine replicas, vLLM's offline data parallel")
    g.add_argument("--engine-kwargs", type=_json_arg, help='vllm: JSON for vllm.LLM, e.g. {"max_model_len": 16384}')
    g.add_argument("--reasoning-parser", help="vllm: vLLM reasoning parser splitting thinking from the answer")
    s = parser.add_argument_group("sampling (override every teacher's setting when given)")
    s.add_argument("-k", "--samples", type=int, help=f"samples per question K (default {_D['samples']})")
    s.add_argument("--temperature", type=float, help=f"default {_D['temperature']}")
    s.add_argument("--top-p", type=float, help=f"default {_D['top_p']}")
    s.add_argument("--max-tokens", type=int, help="default: up to the context / the server's default")
    s.add_argument("--seed", type=int, help=f"base seed of the per-sample seeds (default {_D['seed']})")
    s.add_argument("--system-prompt", help="system turn prepended to every question without one")
    s.add_argument("--chat-template-kwargs", type=_json_arg, help='JSON, e.g. {"enable_thinking": true}')
    s.add_argument("--extra-body", type=_json_arg, help="JSON merged into each request (openai) / SamplingParams "
                                                        "(vllm), e.g. {\"top_k\": 20}")


def run(args: argparse.Namespace) -> int:
    """`generate` from parsed `add_arguments` options; 0 when every requested sample has a good line."""
    overrides = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k, None) is not None}
    flag = {k: getattr(args, k) for k in FLAG_TEACHER if getattr(args, k, None) is not None}
    if flag and "model" not in flag:
        raise SystemExit(f"--{next(iter(flag)).replace('_', '-')} describes a teacher given by flags: add --model")
    try:
        teachers = load_teachers(args.teachers, overrides=overrides, flag_teacher=flag or None)
        questions = load_questions(args.questions, split=args.split, id_field=args.id_field,
                                   prompt_field=args.prompt_field, answer_field=args.answer_field)
    except (ValueError, OSError) as e:  # SSFTDataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = generate_candidates(questions, teachers, args.output, retry_failed=args.retry_failed,
                                      progress=not args.no_progress)
    except (ValueError, OSError) as e:  # e.g. a candidates file that is not one, a teacher vLLM refuses
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 0 if summary.complete else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m trl_ssft.traces.generate", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
