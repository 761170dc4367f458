"""Property tests: random (mostly malformed) rows thrown at the data path.

Every failure must be the library's own `SSFTDataError` naming the row (never a KeyError, TypeError,
IndexError, AttributeError...), and valid rows must pass and tokenize to the documented layout.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cpu_args
from trl_ssft.data import SSFTDataError, prepare_ssft_dataset, tokenize_rows, validate_row, validate_tokenized_row

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

text = st.text(max_size=30)
nice_text = st.text(alphabet="abc xyz 0123456789+=.<>", min_size=1, max_size=30).filter(lambda s: s.strip())
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text, st.binary(max_size=5))
anything = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(text, c, max_size=4),
                                                     st.tuples(c, c)), max_leaves=12)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "", 3, None]),
                           "content": st.one_of(text, scalar)}),
    st.dictionaries(st.sampled_from(["role", "content", "name"]), anything, max_size=3),
    anything,
)
prompt = st.one_of(anything, text, st.lists(message, max_size=3))
traces = st.one_of(anything, st.lists(st.one_of(text, nice_text, scalar, anything), max_size=8))
row = st.one_of(
    anything,
    st.dictionaries(st.sampled_from(["prompt", "traces", "trace_sources", "answer", "extra"]),
                    st.one_of(prompt, traces, anything), max_size=5),
    st.fixed_dictionaries({"prompt": prompt, "traces": traces},
                          optional={"trace_sources": anything, "answer": anything}),
)
valid_prompt = st.one_of(
    nice_text,
    st.builds(lambda s, q: ([{"role": "system", "content": s}] if s else []) + [{"role": "user", "content": q}],
              st.one_of(st.just(""), nice_text), nice_text),
)
valid_row = st.fixed_dictionaries({"prompt": valid_prompt, "traces": st.lists(nice_text, min_size=1, max_size=6)})


@pytest.fixture(scope="module")
def tok():
    from trl_ssft.demo.tiny import build_tiny_tokenizer

    t = build_tiny_tokenizer(["add 12 34 56", "12 + 34 = 46 . answer", "abc xyz <> 0123456789"], vocab_size=300)
    t.add_special_tokens({"additional_special_tokens": [f"<think{i}>" for i in range(1, 7)]})
    return t


def _check_error(e: SSFTDataError, index: int) -> None:
    assert e.row == index and e.field, str(e)
    assert f"row {index}, field '{e.field}'" in str(e)


@SETTINGS
@given(r=row, index=st.integers(0, 10 ** 6), n=st.one_of(st.none(), st.integers(1, 8)),
       policy=st.sampled_from(["error", "subsample"]))
def test_validate_row_only_raises_ssft_data_error(r, index, n, policy):
    try:
        validate_row(r, index, num_fork_tokens=n, max_traces_policy=policy, fork_names=["<think1>", "<think2>"])
    except SSFTDataError as e:
        _check_error(e, index)


@SETTINGS
@given(rows=st.lists(st.one_of(row, valid_row), min_size=1, max_size=4), max_length=st.one_of(
    st.none(), st.integers(0, 80)), dup=st.sampled_from(["keep", "warn", "drop"]),
    long=st.sampled_from(["truncate", "drop"]))
def test_tokenize_rows_only_raises_ssft_data_error(tok, rows, max_length, dup, long):
    try:
        out = tokenize_rows(rows, tok, max_length=max_length, duplicate_policy=dup, long_policy=long)
    except SSFTDataError as e:
        assert 0 <= e.row < len(rows)
        _check_error(e, e.row)
        return
    for r in out:
        assert r["prompt_ids"] and r["trace_ids"] and all(r["trace_ids"])
        if max_length is not None:
            assert all(len(r["prompt_ids"]) + 1 + len(t) <= max_length for t in r["trace_ids"])


@SETTINGS
@given(rows=st.lists(st.one_of(row, valid_row), min_size=1, max_size=4))
def test_prepare_dataset_only_raises_ssft_data_error(tok, tmp_path_factory, rows):
    cfg = cpu_args(tmp_path_factory.getbasetemp())
    try:
        prepare_ssft_dataset(list(rows), tok, cfg, 64)
    except SSFTDataError as e:
        assert e.row is None or 0 <= e.row < len(rows)


@SETTINGS
@given(r=st.one_of(anything, st.fixed_dictionaries({
    "prompt_ids": st.one_of(anything, st.lists(st.integers(-5, 400), max_size=5)),
    "trace_ids": st.one_of(anything, st.lists(st.one_of(anything, st.lists(st.integers(-5, 400), max_size=4)),
                                              max_size=8))})))
def test_validate_tokenized_row_only_raises_ssft_data_error(r):
    try:
        validate_tokenized_row(r, 3, vocab_size=300, fork_ids=[290, 291], fork_names=["<think1>", "<think2>"],
                               num_fork_tokens=6)
    except SSFTDataError as e:
        _check_error(e, 3)


@SETTINGS
@given(rows=st.lists(valid_row, min_size=1, max_size=4))
def test_valid_rows_pass(tok, tmp_path_factory, rows):
    for i, r in enumerate(rows):
        validate_row(r, i, num_fork_tokens=6, fork_names=[f"<think{i}>" for i in range(1, 7)])
    cfg = cpu_args(tmp_path_factory.getbasetemp(), max_length=None)
    out = prepare_ssft_dataset(list(rows), tok, cfg, None)
    assert len(out) == len(rows)
    for r, o in zip(rows, out):
        assert len(o["trace_ids"]) == len(r["traces"])
        assert all(t[-1] == tok.eos_token_id for t in o["trace_ids"])
