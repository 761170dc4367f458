"""The one tokenized-row finaliser (`trl_ssft.data.finalize_tokenized`) behind both front ends, and the
one-home helpers: the M > N rule, the pad-token fallback, forking-token names -> ids."""

import logging
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset

from conftest import cpu_args
from trl_ssft.checks import MAX_TRACES_FIX, check_max_traces, more_traces_than_tokens
from trl_ssft.data import (
    DataReport,
    SSFTDataError,
    apply_trace_policies,
    count_row,
    finalize_tokenized,
    prepare_ssft_dataset,
)
from trl_ssft.config import SSFTFields, fork_token_names
from trl_ssft.tokens import fork_token_ids, pad_token_id

NAMES = [f"<think{i}>" for i in range(1, 7)]


@pytest.fixture(scope="module")
def tok():
    from trl_ssft.demo.tiny import build_tiny_tokenizer

    t = build_tiny_tokenizer(["add 12 34 56", "12 + 34 = 46 . answer", "abc xyz 0123456789"], vocab_size=300)
    t.add_special_tokens({"additional_special_tokens": NAMES})
    return t


def _rows(n=12):
    rng = random.Random(0)
    rows = []
    for i in range(n):
        traces = [[rng.randrange(1, 200) for _ in range(rng.randrange(3, 12))] for _ in range(3)]
        rows.append({"prompt_ids": [rng.randrange(1, 200) for _ in range(5)], "trace_ids": traces})
    rows[1]["trace_ids"].append(list(rows[1]["trace_ids"][0]))  # a duplicate
    rows[2]["trace_ids"][1] = list(range(1, 60))  # too long for max_length 40
    rows[3]["trace_ids"] += [[7, 8, 9 + k] for k in range(5)]  # M = 8 > N = 6
    return rows


def _summary(out: str) -> str:
    lines = [s for s in out.splitlines() if s.startswith("SSFT data (")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize("policies", [dict(), dict(ssft_duplicate_traces="drop", ssft_long_traces="drop")])
def test_both_front_ends_print_the_same_summary(tok, tmp_path, capsys, caplog, policies):
    from axolotl_ssft.ssft import finalize_dataset

    ds = Dataset.from_list(_rows())
    cfg = cpu_args(tmp_path, max_length=40, ssft_max_traces_policy="subsample", **policies)
    with caplog.at_level(logging.WARNING):
        trl_out = prepare_ssft_dataset(ds, tok, cfg, 40, "train")
    trl_summary, trl_log = _summary(capsys.readouterr().out), caplog.text
    caplog.clear()
    settings = SSFTFields(ssft_max_traces_policy="subsample", **policies)
    ids = fork_token_ids(tok, fork_token_names(settings))
    ax = ds.add_column("ssft_row", list(range(len(ds)))).add_column("ssft_source", ["data.jsonl"] * len(ds))
    with caplog.at_level(logging.WARNING):
        ax_out = finalize_dataset(ax, settings, ids, NAMES, 40, "train")
    ax_summary = _summary(capsys.readouterr().out)
    assert trl_summary == ax_summary
    assert "1 rows with more traces than forking tokens (subsampled each step)" in trl_summary
    assert "1 duplicate traces" in trl_summary
    if not policies:
        assert "1 traces truncated to max_length" in trl_summary
        assert "train dataset: 1 duplicate traces within rows (kept" in trl_log
        assert "train dataset: 1 duplicate traces within rows (kept" in caplog.text
    else:
        assert "1 too-long traces dropped" in trl_summary and "(1 dropped)" in trl_summary
    assert trl_out["trace_ids"] == ax_out["trace_ids"] and trl_out["prompt_ids"] == ax_out["prompt_ids"]


def _reference(rows, max_length, dup, long):
    """The row-by-row semantics the batched finaliser must keep (the former Python loop)."""
    report, out = DataReport(), []
    for i, r in enumerate(rows):
        kept = apply_trace_policies(i, r["prompt_ids"], r["trace_ids"], max_length=max_length, duplicate_policy=dup,
                                    long_policy=long, report=report)
        if count_row(report, kept):
            out.append({"prompt_ids": r["prompt_ids"], "trace_ids": kept})
    return out, report


@pytest.mark.parametrize("seed", range(12))
def test_batched_policies_match_the_row_by_row_reference(seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(rng.randrange(1, 60)):
        pool = [[rng.randrange(0, 9) for _ in range(rng.randrange(1, 9))] for _ in range(3)]
        rows.append({"prompt_ids": [1] * rng.randrange(1, 6),
                     "trace_ids": [list(rng.choice(pool)) for _ in range(rng.randrange(1, 7))]})
    max_length = rng.choice([None, 8, 12])
    dup, long = rng.choice(["keep", "warn", "drop"]), rng.choice(["truncate", "drop"])
    want, ref = _reference(rows, max_length, dup, long)
    if not want:
        with pytest.raises(SSFTDataError, match="no usable row"):
            finalize_tokenized(Dataset.from_list(rows), fork_ids=[], fork_names=[], num_fork_tokens=None,
                               max_traces_policy="error", assignment="hungarian", duplicate_policy=dup,
                               long_policy=long, max_length=max_length, max_truncated_share=1.0)
        return
    out, report = finalize_tokenized(
        Dataset.from_list(rows), fork_ids=[], fork_names=[], num_fork_tokens=None, max_traces_policy="error",
        assignment="hungarian", duplicate_policy=dup, long_policy=long, max_length=max_length, num_proc=1,
        max_truncated_share=1.0)  # the policies' mechanics; the share rule: tests/unit/test_long_traces.py
    assert out.to_list() == want
    for k in ("rows", "traces", "truncated", "dropped_long", "duplicates", "dropped_duplicates", "dropped_rows"):
        assert getattr(report, k) == getattr(ref, k), k
    assert report.summary() == ref.summary()


def _big(n=2500):
    return [{"prompt_ids": [5, 6, 7], "trace_ids": [[8, 9], [10, 11, 12]]} for _ in range(n)]


KW = dict(fork_ids=[290, 291], fork_names=["<think1>", "<think2>"], num_fork_tokens=2, max_traces_policy="error",
          assignment="hungarian", duplicate_policy="warn", long_policy="truncate", max_length=64, vocab_size=300)


@pytest.mark.parametrize("mutate,pattern", [
    (lambda r: r["trace_ids"][1].append(291),
     r"row 2100, field 'trace_ids\[1\]': contains the forking token '<think2>'"),
    (lambda r: r["prompt_ids"].append(300), r"row 2100, field 'prompt_ids': contains token id 300, outside the voc"),
    (lambda r: r["prompt_ids"].append(-1), r"row 2100, field 'prompt_ids': contains token id -1"),
    (lambda r: r["prompt_ids"].append(None), r"row 2100, field 'prompt_ids': contains NoneType None, not a token"),
    (lambda r: r["trace_ids"].append([1]), r"row 2100, field 'trace_ids': has 3 traces but there are only 2 forking"),
    (lambda r: r["trace_ids"].__setitem__(0, []), r"row 2100, field 'trace_ids\[0\]': must be a non-empty list"),
    (lambda r: r.__setitem__("trace_ids", None), r"row 2100, field 'trace_ids': must be a non-empty list of token-id"),
    (lambda r: r.__setitem__("prompt_ids", [1] * 70), r"row 2100, field 'prompt': is 70 tokens long, leaving no room"),
])
@pytest.mark.parametrize("as_list", [False, True])
def test_errors_name_row_and_field_after_batching(mutate, pattern, as_list):
    rows = _big()
    mutate(rows[2100])
    rows[2300]["trace_ids"].append([1])  # a later bad row: the first one is reported
    with pytest.raises(SSFTDataError, match="train dataset, " + pattern) as e:
        finalize_tokenized(rows if as_list else Dataset.from_list(rows), **KW)
    assert e.value.row == 2100 and e.value.dataset == "train"


def test_untyped_columns_are_checked_row_by_row():
    rows = _big(5)
    rows[3]["trace_ids"][0] = [1.5]
    with pytest.raises(SSFTDataError, match=r"row 3, field 'trace_ids\[0\]': contains float 1.5, not a token id"):
        finalize_tokenized(rows, **KW)
    rows[3] = "not a row"
    with pytest.raises(SSFTDataError, match=r"row 3, field '<row>': a row must be a mapping"):
        finalize_tokenized(rows, **KW)


def test_source_rows_and_processes(tok):
    """Axolotl's cached rows carry their source and row number; errors cross `num_proc` processes intact."""
    rows = _big(3000)
    rows[2500]["trace_ids"][0].append(290)
    ds = Dataset.from_list(rows).add_column("ssft_row", [k + 7 for k in range(3000)])
    ds = ds.add_column("ssft_source", ["data/x.jsonl"] * 3000)
    kw = dict(KW, fields=("prompt", "traces"))
    with pytest.raises(SSFTDataError, match=r"data/x.jsonl dataset, row 2507, field 'traces\[0\]': contains the "
                       "forking token '<think1>'") as e:
        finalize_tokenized(ds, num_proc=2, **kw)
    assert (e.value.row, e.value.field, e.value.dataset) == (2507, "traces[0]", "data/x.jsonl")
    rows[2500]["trace_ids"][0].pop()
    rows[5]["trace_ids"].append(list(rows[5]["trace_ids"][0]))  # M = 3 > N = 2, and a duplicate
    ds = Dataset.from_list(rows)
    kw = dict(kw, max_traces_policy="subsample", max_length=6, max_truncated_share=1.0)  # every trace truncated
    one, r1 = finalize_tokenized(ds, num_proc=1, **kw)
    two, r2 = finalize_tokenized(ds, num_proc=2, **kw)
    assert r1.summary() == r2.summary() and one["trace_ids"] == two["trace_ids"]
    assert r1.subsampled_rows == 1 and r1.duplicates == 1 and r1.truncated == 3000


def test_unchanged_dataset_is_returned_as_is():
    ds = Dataset.from_list(_big(10))
    out, report = finalize_tokenized(ds, **KW)
    assert out is ds and report.rows == 10 and report.traces == 20


def test_error_pickles_with_its_fields():
    e = pickle.loads(pickle.dumps(SSFTDataError(4, "traces[1]", "is empty.", "remove it.", "eval")))
    assert (e.row, e.field, e.dataset) == (4, "traces[1]", "eval")
    assert str(e) == "SSFT data error in eval dataset, row 4, field 'traces[1]': is empty. Fix: remove it."


def test_supervised_tokens_vectorised():
    from axolotl_ssft.ssft import supervised_tokens

    rows = _rows()
    want_sup = sum(len(t) for r in rows for t in r["trace_ids"])
    want_total = sum(len(r["prompt_ids"]) + 1 + len(t) for r in rows for t in r["trace_ids"])
    assert supervised_tokens(Dataset.from_list(rows).select([3, 1, 0, 2] + list(range(4, 12)))) == (want_total,
                                                                                                     want_sup)


# ------------------------------------------------------------------ the M > N rule
def test_max_traces_rule_one_wording():
    assert check_max_traces(6, 6, "error", "hungarian") is False
    assert check_max_traces(7, 6, "subsample", "hungarian") is True
    assert check_max_traces(9, 6, "error", "none") is False  # SFT-mixed: no token, any M
    assert check_max_traces(9, None, "error", "hungarian") is False
    with pytest.raises(SSFTDataError) as e:
        check_max_traces(7, 6, "error", "random", row=3, field_name="trace_ids", dataset="eval")
    assert str(e.value) == ("SSFT data error in eval dataset, row 3, field 'trace_ids': has 7 traces but there are "
                            f"only 6 forking tokens (M > N). Fix: {MAX_TRACES_FIX}")
    with pytest.raises(ValueError, match=r"^a question has 7 traces but there are only 6 forking tokens \(M > N\)\. "
                       r"Fix: raise ssft_num_fork_tokens") as e:
        check_max_traces(7, 6, "error", "hungarian")
    assert not isinstance(e.value, SSFTDataError)
    m = np.array([3, 7, 6, 9])
    assert more_traces_than_tokens(m, 6, "hungarian").tolist() == [False, True, False, True]
    assert more_traces_than_tokens(m, 6, "none").tolist() == [False] * 4


def test_collator_uses_the_rule():
    from trl_ssft.collator import SSFTCollator

    rows = [{"prompt_ids": [1, 2], "trace_ids": [[3]] * 3}]
    with pytest.raises(ValueError, match=r"a question has 3 traces but there are only 2 forking tokens \(M > N\)"):
        SSFTCollator(pad_token_id=0, num_fork_tokens=2)(rows)
    assert SSFTCollator(pad_token_id=0, num_fork_tokens=2, max_traces_policy="subsample")(rows)[
        "ssft_trace_ids"].shape == (1, 3, 1)
    assert SSFTCollator(pad_token_id=0, num_fork_tokens=2, assignment="none")(rows)["ssft_trace_len"].tolist() == [
        [1, 1, 1]]


# ------------------------------------------------------------------ tokens: pad id, names -> ids
def test_pad_token_fallback():
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=9)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=9)) == 0  # 0 is a real id
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=9)) == 9
    assert pad_token_id(SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=None, eos_token_id=4))) == 4
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))


def test_fork_token_ids(tok):
    ids = fork_token_ids(tok, NAMES)
    assert ids == tok.convert_tokens_to_ids(NAMES)
    assert all(tok("x" + n, add_special_tokens=False)["input_ids"][-1] == i for n, i in zip(NAMES, ids))
    assert fork_token_ids(tok, ["<think1>", "<think99>"], missing="none") == [ids[0], None]
    with pytest.raises(ValueError, match="'<think99>' is not a single token"):
        fork_token_ids(tok, ["<think99>"])
