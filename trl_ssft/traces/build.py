"""`build`: a source (public dataset, candidates file, several files) -> verified, de-duplicated, diverse ssft rows.

    from trl_ssft.traces import build
    report = build(["simplescaling/s1K-1.1"], "s1k_ssft.jsonl", preset="s1k")

Streaming in bounded memory, through Arrow:

1. Each input is opened as a memory-mapped `datasets.Dataset` (`load_input`).
2. Questions become groups of source rows: one row each for the wide shapes (``columns``, ``lists``);
   for ``long`` / ``join`` the row numbers of each question key in first-appearance order (one stable
   argsort of the key column: an int per row, never the texts).
3. ``Dataset.map`` over the groups (`batch_size` questions at a time, `num_proc` processes) reads each
   group's rows, turns them into candidates (`sources.py`), verifies them (`verify.py`), selects up to M
   (`select.py`) and writes one ssft row per question to an Arrow file in a work directory, with its
   counts. Only a batch of questions is in memory per process.
4. The kept rows are written as JSONL (``.jsonl``), Parquet (``.parquet``) or a saved `datasets` folder
   (any other path), all read as they are by ``trl-ssft train --dataset_name`` and an Axolotl
   ``type: ssft`` dataset; the counts go to ``<output>.build.json`` (read by ``trl-ssft data report``).

Output rows: ``{"question_id", "prompt", "traces", "trace_sources", "answer"}``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..checks import SSFTDataError, validate_row
from .select import SelectOptions, check_select, select_traces
from .sources import SHAPES, SourceSpec, check_columns, required_columns, row_candidates, resolve_spec
from .verify import Verifier, VerifyOptions, check_options, verify_question

FILE_TEACHER = "__file_teacher__"


def load_input(path, split: str = "train", config: str | None = None):
    """A `datasets.Dataset` from a .jsonl/.json/.parquet/.csv file, a saved dataset folder, a folder of data
    files, or a hub dataset name (`split` of it); a `Dataset` is returned as it is."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    if isinstance(path, Dataset):
        return path
    p = Path(path)
    if p.is_file():
        ext = p.suffix.lower().lstrip(".")
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(ext)
        if builder is None:
            raise ValueError(f"{path}: unsupported file type; use .jsonl, .json, .parquet or .csv")
        return load_dataset(builder, data_files=str(p), split="train")
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        ds = load_from_disk(str(p))
        return ds[split] if isinstance(ds, DatasetDict) else ds
    return load_dataset(path, config, split=split)


def _label(path) -> str:
    name = Path(str(path).rstrip("/")).name
    for ext in (".jsonl", ".json", ".parquet", ".csv"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    return name


def _name(source) -> str:
    return source if isinstance(source, str) else f"<{type(source).__name__} of {len(source)} rows>"


def open_source(inputs: list[str], spec: SourceSpec | None, preset: str | None, split: str = "train",
                config: str | None = None):
    """(one `Dataset` over all inputs, the resolved `SourceSpec`). Several inputs of one layout are
    concatenated; under ``join`` each file's rows get the file's teacher label."""
    from datasets import concatenate_datasets

    if not inputs:
        raise ValueError("give at least one input (a file, a saved dataset folder or a hub dataset name)")
    sets = [load_input(p, split, config) for p in inputs]
    spec = resolve_spec(spec, preset, sets[0].column_names)
    for path, ds in zip(inputs, sets):
        check_columns(spec, ds.column_names, _name(path))
    if spec.shape == "join":
        labels = list(spec.trace_sources) or [_label(p) for p in inputs]
        if len(labels) != len(inputs):
            raise ValueError(f"join: {len(inputs)} files but {len(labels)} teacher labels {labels}")
        sets = [ds.add_column(FILE_TEACHER, [lab] * len(ds)) for ds, lab in zip(sets, labels)]
        spec = replace(spec, teacher_column=FILE_TEACHER)
    keep = required_columns(spec)
    try:
        source = concatenate_datasets([ds.select_columns(keep) for ds in sets]) if len(sets) > 1 else \
            sets[0].select_columns(keep)
    except Exception as e:  # features that differ between files
        raise ValueError(f"the inputs {inputs} cannot be read as one source (their columns differ: {e})") from e
    return source, spec


def question_groups(source, spec: SourceSpec, max_questions: int | None = None):
    """An Arrow list array: for each question, its source row numbers (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(source)
    if SHAPES[spec.shape].wide:
        offsets, values = np.arange(n + 1), np.arange(n)
    else:
        col = source.select_columns([spec.id_column]).with_format("arrow")[:].column(0)
        nulls = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
        if len(nulls):
            raise SSFTDataError(int(nulls[0]), spec.id_column, "the question key is missing.",
                                "give every row a key.", "source")
        codes = pc.dictionary_encode(pc.cast(col, pa.string()).combine_chunks()).indices.to_numpy()
        values = np.argsort(codes, kind="stable")
        starts = np.flatnonzero(np.diff(codes[values])) + 1
        offsets = np.concatenate([[0], starts, [n]]) if n else np.array([0])
    if max_questions is not None:
        offsets = offsets[: max_questions + 1]
        values = values[: offsets[-1]]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))


def _one_question(cands, verifier: Verifier, sopts: SelectOptions, dataset: str, messages: bool,
                  prompt_column: str) -> tuple[dict, dict]:
    """(ssft row, its counts) of one question's candidates (its source rows' candidates, maybe none)."""
    if not cands:
        return {"question_id": None, "prompt": [] if messages else "", "traces": [], "trace_sources": [],
                "answer": None}, {"candidates": 0, "counts": {}, "status": "no_trace", "reference": False}
    first = cands[0]
    reference = next((c.answer for c in cands if c.answer is not None), None)
    for c in cands:
        if c.prompt != first.prompt:
            raise SSFTDataError(c.row, "prompt", f"question {first.question_id!r} has another prompt in row "
                                f"{first.row}.", "give each question key one prompt.", dataset)
        c.answer = reference if c.answer is None else c.answer
    if isinstance(first.prompt, str) == messages:
        raise SSFTDataError(first.row, prompt_column, "mixes plain-text questions and chat message lists.",
                            "give all questions one type (or keep as_messages on).", dataset)
    traces, teachers, counts = verify_question(cands, verifier)
    keep, sel = select_traces(first.question_id, traces, teachers, sopts) if traces else ([], Counter())
    counts.update(sel)
    status = "ok" if keep else ("too_few_traces" if traces else "no_trace")
    prompt = [{"role": m["role"], "content": m["content"]} for m in first.prompt] if messages else first.prompt
    row = {"question_id": first.question_id, "prompt": prompt, "traces": [traces[i] for i in keep],
           "trace_sources": [teachers[i] for i in keep], "answer": reference}
    if keep:
        validate_row(row, first.row, dataset=dataset)
    stats = {"candidates": len(cands), "counts": dict(counts), "status": status, "reference": reference is not None}
    return row, stats


def _process(batch, source, spec: SourceSpec, vopts: VerifyOptions, sopts: SelectOptions, dataset: str,
             messages: bool) -> dict:
    """`Dataset.map` body: a batch of question groups -> ssft rows + `_keep` + `_stats` (JSON counts)."""
    verifier = Verifier(vopts)
    data = source[[r for rows in batch["rows"] for r in rows]]
    columns = list(data)
    out = {k: [] for k in ("question_id", "prompt", "traces", "trace_sources", "answer", "_keep", "_stats")}
    pos = 0
    for rows in batch["rows"]:
        cands = []
        for r in rows:
            cands += row_candidates({c: data[c][pos] for c in columns}, r, spec, dataset)
            pos += 1
        row, stats = _one_question(cands, verifier, sopts, dataset, messages, spec.prompt_column)
        for k, v in row.items():
            out[k].append(v)
        out["_keep"].append(stats["status"] == "ok")
        out["_stats"].append(json.dumps(stats))
    return out


def _features(messages: bool):
    from datasets import Features, Sequence, Value

    prompt = [{"role": Value("string"), "content": Value("string")}] if messages else Value("string")
    return Features({"question_id": Value("string"), "prompt": prompt, "traces": Sequence(Value("string")),
                     "trace_sources": Sequence(Value("string")), "answer": Value("string"),
                     "_keep": Value("bool"), "_stats": Value("string")})


def _prompt_is_messages(source, spec: SourceSpec) -> bool:
    if spec.as_messages or spec.system_prompt or not len(source):
        return True
    return not isinstance(source[0][spec.prompt_column], str)


def write_output(dataset, output: str) -> str:
    """Write ssft rows as JSONL (.jsonl), Parquet (.parquet) or a saved `datasets` folder (any other path)."""
    low = output.lower()
    if low.endswith(".json"):
        raise ValueError(f"{output}: write JSON lines (.jsonl), Parquet (.parquet) or a folder")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if low.endswith(".jsonl"):
        dataset.to_json(output, lines=True, batch_size=256, force_ascii=False)
    elif low.endswith(".parquet"):
        dataset.to_parquet(output, batch_size=256)
    else:
        dataset.save_to_disk(output)
    return output


def summarize(stats_json: list[str], out_rows) -> dict:
    """The build's counts: questions in / out / dropped by reason, candidates, drops by reason, teachers."""
    drops: Counter = Counter()
    questions: Counter = Counter()
    candidates = no_reference = 0
    for s in map(json.loads, stats_json):
        candidates += s["candidates"]
        drops.update(s["counts"])
        questions[s["status"]] += 1
        no_reference += not s["reference"]
    kept_incorrect = drops.pop("kept_incorrect", 0)
    per_q = Counter(len(t) for t in out_rows["trace_sources"])
    teachers = Counter(t for ts in out_rows["trace_sources"] for t in ts)
    return {"questions_in": sum(questions.values()), "questions_out": questions.get("ok", 0),
            "questions_dropped": {k: v for k, v in questions.items() if k != "ok"},
            "questions_without_reference": no_reference, "candidates": candidates,
            "traces_out": sum(k * v for k, v in per_q.items()), "drops": dict(drops.most_common()),
            "kept_incorrect": kept_incorrect, "traces_per_question": {str(k): per_q[k] for k in sorted(per_q)},
            "teachers": dict(teachers.most_common())}


def build(inputs, output: str, *, source: SourceSpec | None = None, preset: str | None = None,
          verify: VerifyOptions | None = None, select: SelectOptions | None = None, num_proc: int = 1,
          batch_size: int = 64, work_dir: str | None = None, split: str = "train", config: str | None = None,
          max_questions: int | None = None) -> dict:
    """Convert + verify + select `inputs` (paths / hub names / `Dataset`s, or one of them) into ssft rows at
    `output`; returns the counts (also written to ``<output>.build.json``). See the module docstring."""
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    verify, select = verify or VerifyOptions(), select or SelectOptions()
    check_options(verify)
    check_select(select)
    t0 = time.perf_counter()
    src, spec = open_source(inputs, source, preset, split, config)
    messages = _prompt_is_messages(src, spec)
    from datasets import Dataset

    groups = Dataset(__import__("pyarrow").table({"rows": question_groups(src, spec, max_questions)}))
    work = tempfile.mkdtemp(prefix="ssft-build-", dir=work_dir or (os.path.dirname(os.path.abspath(output))))
    try:
        built = groups.map(
            _process, batched=True, batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
            fn_kwargs=dict(source=src, spec=spec, vopts=verify, sopts=select, messages=messages,
                           dataset=",".join(map(_name, inputs))),
            remove_columns=["rows"], features=_features(messages), cache_file_name=os.path.join(work, "built.arrow"),
            load_from_cache_file=False, new_fingerprint=uuid.uuid4().hex, desc="verify + select",
        )
        keep = np.flatnonzero(np.asarray(built["_keep"], dtype=bool))
        rows = built.select(keep, keep_in_memory=True).remove_columns(["_keep", "_stats"])
        report = summarize(built["_stats"], rows.select_columns(["trace_sources"]).to_dict())
        write_output(rows, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.update(output=output, inputs=[_name(p) for p in inputs], wall_s=round(time.perf_counter() - t0, 2),
                  num_proc=num_proc, source=asdict(spec), verify=asdict(verify), select=asdict(select))
    with open(build_report_path(output), "w") as f:
        json.dump(report, f, indent=1)
    return report


def format_build(report: dict) -> str:
    """The build's counts as a plain-text table (drops by reason, with what each reason means)."""
    from .select import SELECT_REASONS
    from .verify import REASONS

    meaning = {**REASONS, **SELECT_REASONS}
    lines = [f"ssft data build: {', '.join(report['inputs'])} -> {report['output']} ({report['wall_s']} s, "
             f"num_proc {report['num_proc']})",
             f"  questions   {report['questions_in']} in, {report['questions_out']} out; dropped: "
             + (", ".join(f"{k} {v}" for k, v in report["questions_dropped"].items()) or "none")
             + f"; without a reference answer: {report['questions_without_reference']}",
             f"  candidates  {report['candidates']}; traces out {report['traces_out']}; kept incorrect "
             f"{report['kept_incorrect']}",
             "  traces per question  " + ", ".join(f"{k}: {v}" for k, v in report["traces_per_question"].items()),
             "  teachers    " + (", ".join(f"{k} {v}" for k, v in report["teachers"].items()) or "none"),
             "  dropped traces:" + ("" if report["drops"] else " none")]
    lines += [f"    {k:<22} {v:>9}  {meaning.get(k, '')}" for k, v in report["drops"].items()]
    return "\n".join(lines)


def build_report_path(output: str) -> str:
    """Where `build` writes its counts for `output`: ``<output>.build.json`` next to it."""
    return output.rstrip("/") + ".build.json"


__all__ = ["build", "build_report_path", "format_build", "load_input", "open_source", "question_groups", "summarize",
           "write_output"]
