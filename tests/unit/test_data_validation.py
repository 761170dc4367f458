"""Every bad-input case of the ssft data path: a clear `SSFTDataError` naming the dataset, the row and
the field, with a fix; and the counted policies (duplicates, too-long traces, M > N) with the summary
printed before training."""

import logging

import pytest
from datasets import Dataset

from conftest import cpu_args
from trl_ssft.data import DataReport, SSFTDataError, prepare_ssft_dataset, tokenize_rows, validate_row

Q = [{"role": "user", "content": "add 11 22 33"}]


def row(prompt=Q, traces=("11 + 22 = 33 . 33 + 33 = 66", "33 + 22 = 55 . 55 + 11 = 66"), **kw):
    r = {"prompt": prompt, "traces": list(traces) if isinstance(traces, tuple) else traces}
    r.update(kw)
    return r


@pytest.fixture(scope="module")
def tok(tiny_models):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_models["tied"])
    t.add_special_tokens({"additional_special_tokens": [f"<think{i}>" for i in range(1, 7)]})
    return t


def prepare(rows, tok, tmp_path, name="train", max_length=256, as_list=True, **kw):
    cfg = cpu_args(tmp_path, max_length=max_length, **kw)
    data = [dict(r) if isinstance(r, dict) else r for r in rows] if as_list else Dataset.from_list(rows)
    return prepare_ssft_dataset(data, tok, cfg, max_length, name)


def expect(rows, tok, tmp_path, pattern, **kw):
    with pytest.raises(SSFTDataError, match=pattern) as e:
        prepare(rows, tok, tmp_path, **kw)
    assert "Fix:" in str(e.value) or "no usable row" in str(e.value)
    return e.value


BAD_ROWS = [
    # (bad row, field, problem) -- the bad row is always row 1 of [good, bad, good]
    ({"traces": ["x"]}, "prompt", "missing"),
    (row(prompt=""), "prompt", "missing or empty"),
    (row(prompt="   "), "prompt", "missing or empty"),
    (row(prompt=None), "prompt", "missing or empty"),
    (row(prompt=17), "prompt", "must be a string or a non-empty list of chat messages, got int 17"),
    (row(prompt=[]), "prompt", "must be a string or a non-empty list"),
    (row(prompt=["hi"]), "prompt[0]", "each message must be a dict with 'role' and 'content'"),
    (row(prompt=[{"role": "user"}]), "prompt[0]", "each message must be a dict"),
    (row(prompt=[{"role": "user", "content": 3}]), "prompt[0].content", "message content must be a string"),
    (row(prompt=[{"role": None, "content": "q"}]), "prompt[0].role", "must be a non-empty string"),
    (row(prompt=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]), "prompt",
     "the last message has role 'assistant'; it must be a user turn"),
    (row(prompt=[{"role": "user", "content": " "}]), "prompt[0].content", "the user's question is empty"),
    ({"prompt": "q"}, "traces", "missing"),
    (row(traces=None), "traces", "missing"),
    (row(traces=[]), "traces", "is empty"),
    (row(traces="one trace"), "traces", "must be a list of strings, got str"),
    (row(traces={"a": "b"}), "traces", "must be a list of strings, got dict"),
    (row(traces=["ok", 5]), "traces[1]", "must be a string, got int 5"),
    (row(traces=["ok", None]), "traces[1]", "must be a string, got NoneType"),
    (row(traces=["ok", ""]), "traces[1]", "is empty"),
    (row(traces=["ok", " \n"]), "traces[1]", "is empty"),
    (row(trace_sources=["a"]), "trace_sources", "must be a list with one label per trace"),
    (row(prompt="what is <think2> here"), "prompt", "contains the forking-token text '<think2>'"),
    (row(prompt=[{"role": "system", "content": "<think1>"}] + Q), "prompt[0].content", "contains the forking-token text '<think1>'"),
    (row(traces=["fine", "a <think6> b"]), "traces[1]", "contains the forking-token text '<think6>'"),
    (row(traces=["a", "b", "c", "d", "e", "f", "g"]), "traces", r"has 7 traces but there are only 6 forking tokens"),
    ("not a dict", "<row>", "a row must be a mapping, got str"),
]


@pytest.mark.parametrize("bad,field,problem", BAD_ROWS, ids=[f"{f}:{p[:25]}" for _, f, p in BAD_ROWS])
def test_bad_row_names_row_and_field(tok, tmp_path, bad, field, problem):
    err = expect([row(), bad, row()], tok, tmp_path, "train dataset, row 1, field '" + field.replace("[", r"\[")
                 .replace("]", r"\]") + "': " + problem)
    assert err.row == 1 and err.field == field


def test_eval_dataset_is_named(tok, tmp_path):
    expect([row(), row(traces=[])], tok, tmp_path, r"eval dataset, row 1, field 'traces': is empty", name="eval")


def test_arrow_dataset_rows_are_checked_too(tok, tmp_path):
    expect([row(), row(), row(traces=["x", ""])], tok, tmp_path, r"row 2, field 'traces\[1\]': is empty",
           as_list=False)
    expect([row(), {"prompt": None, "traces": ["x"]}], tok, tmp_path, r"row 1, field 'prompt': missing or empty",
           as_list=False)


def test_wrong_columns_and_streaming(tok, tmp_path):
    cfg = cpu_args(tmp_path)
    with pytest.raises(SSFTDataError, match=r"columns \['question', 'answer'\], not the ssft format"):
        prepare_ssft_dataset(Dataset.from_list([{"question": "q", "answer": "a"}]), tok, cfg, 256)
    stream = Dataset.from_list([row()]).to_iterable_dataset()
    with pytest.raises(SSFTDataError, match="needs a map-style datasets.Dataset"):
        prepare_ssft_dataset(stream, tok, cfg, 256)


def test_more_traces_than_tokens_policy(tok, tmp_path, capsys):
    seven = row(traces=[f"trace {k}" for k in range(7)])
    expect([row(), seven], tok, tmp_path, r"row 1, field 'traces': has 7 traces .* ssft_max_traces_policy: subsample")
    out = prepare([row(), seven], tok, tmp_path, ssft_max_traces_policy="subsample")
    assert [len(r) for r in out["trace_ids"]] == [2, 7]  # all kept; N of them are drawn at each step
    assert "1 rows with more traces than forking tokens (subsampled each step)" in capsys.readouterr().out
    assert len(prepare([seven], tok, tmp_path, ssft_assignment="none")) == 1  # SFT-mixed has no token: any M


def test_duplicates_warn_or_drop_counted(tok, tmp_path, capsys, caplog):
    dup = row(traces=["same trace", "other", "same trace", "same trace"])
    with caplog.at_level(logging.WARNING):
        out = prepare([dup, row()], tok, tmp_path, ssft_duplicate_traces="warn")
    assert len(out[0]["trace_ids"]) == 4
    assert "2 duplicate traces within rows (kept" in caplog.text
    assert "2 duplicate traces (0 dropped)" in capsys.readouterr().out
    out = prepare([dup, row()], tok, tmp_path, ssft_duplicate_traces="drop")
    assert len(out[0]["trace_ids"]) == 2
    assert "2 duplicate traces (2 dropped)" in capsys.readouterr().out


def test_long_traces_truncate_or_drop_counted(tok, tmp_path, capsys):
    long = " ".join(["11 + 22 = 33"] * 40)
    rows = [row(traces=["short", long]), row(traces=[long])]
    p_len = len(tok.apply_chat_template(Q, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    with pytest.raises(SSFTDataError, match=r"2 of 3 traces \(66.7%\) are longer than max_length=64"):
        prepare(rows, tok, tmp_path, max_length=64)  # over ssft_max_truncated_share (tests/unit/test_long_traces.py)
    out = prepare(rows, tok, tmp_path, max_length=64, ssft_max_truncated_share=1.0)  # the explicit opt-in
    room = 64 - p_len - 1
    assert [len(t) for t in out[0]["trace_ids"]][1] == room and len(out[1]["trace_ids"][0]) == room
    assert "2 traces truncated to max_length" in capsys.readouterr().out
    out = prepare(rows, tok, tmp_path, max_length=64, ssft_long_traces="drop")
    assert len(out) == 1 and len(out[0]["trace_ids"]) == 1
    s = capsys.readouterr().out
    assert "2 too-long traces dropped" in s and "1 rows dropped (no trace left)" in s
    with pytest.raises(SSFTDataError, match="no usable row is left"):
        prepare([row(traces=[long])], tok, tmp_path, max_length=64, ssft_long_traces="drop")


def test_prompt_without_room_for_a_trace(tok, tmp_path):
    long_q = [{"role": "user", "content": "add " + " ".join(["11 22 33"] * 30)}]
    err = expect([row(), row(prompt=long_q)], tok, tmp_path, r"row 1, field 'prompt': is \d+ tokens long, leaving no "
                 r"room for a trace within max_length=48", max_length=48)
    assert "raise max_length" in str(err)


def test_chat_template_that_cannot_render(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_models["tied"])
    t.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                       "{{ raise_exception('system messages are not supported') }}{% endif %}"
                       "{{ m['content'] }}{% endfor %}")
    sys_q = [{"role": "system", "content": "be brief"}] + Q
    err = expect([row(), row(prompt=sys_q)], t, tmp_path, r"row 1, field 'prompt': the chat template cannot render it "
                 r"\(.*system messages are not supported\)")
    assert "check the message roles" in str(err)
    t.chat_template = None
    expect([row()], t, tmp_path, r"row 0, field 'prompt': is a list of chat messages but the tokenizer has no chat "
           "template")
    assert len(prepare([row(prompt="plain text prompt")], t, tmp_path)) == 1  # plain strings need no template


def test_tokenized_datasets_are_validated(tok, tmp_path):
    fork = tok.convert_tokens_to_ids("<think2>")
    good = {"prompt_ids": [5, 6, 7], "trace_ids": [[8, 9], [10]]}
    assert len(prepare([good], tok, tmp_path)) == 1
    expect([good, {"prompt_ids": [5], "trace_ids": [[8, fork]]}], tok, tmp_path,
           r"row 1, field 'trace_ids\[0\]': contains the forking token '<think2>'")
    expect([good, {"prompt_ids": [5, 10 ** 6], "trace_ids": [[8]]}], tok, tmp_path,
           r"row 1, field 'prompt_ids': contains token id 1000000, outside the vocabulary")
    expect([good, {"prompt_ids": [5], "trace_ids": []}], tok, tmp_path, r"row 1, field 'trace_ids': must be a non-empty")
    expect([good, {"prompt_ids": [5], "trace_ids": [[1]] * 7}], tok, tmp_path, r"row 1, field 'trace_ids': has 7 traces")
    expect([good, {"prompt_ids": [5], "trace_ids": [[1], []]}], tok, tmp_path, r"row 1, field 'trace_ids\[1\]'")


def test_tokenize_rows_validates_and_reports(tok):
    with pytest.raises(SSFTDataError, match=r"row 1, field 'traces\[0\]': must be a string"):
        tokenize_rows([row(), row(traces=[b"bytes"])], tok, max_length=None)
    report = DataReport()
    out = tokenize_rows([row(), row(traces=["a", "a"])], tok, max_length=None, duplicate_policy="drop", report=report)
    assert report.rows == 2 and report.traces == 3 and report.dropped_duplicates == 1
    assert all(t[-1] == tok.eos_token_id for r in out for t in r["trace_ids"])
    validate_row(row(), 0, num_fork_tokens=2, fork_names=["<think1>"])  # a valid row passes


def test_summary_is_printed_before_training(tiny_models, rows, tmp_path, capsys):
    """The TRL front end: bad data stops `SSFTTrainer(...)` before training, with the row and field; good data
    prints the report (what was dropped/truncated) when the trainer is built, i.e. before the first step."""
    from trl_ssft import SSFTTrainer

    data = [dict(r) for r in rows[:6]]
    data = [{k: v for k, v in r.items() if k != "trace_sources"} for r in data]
    data[2]["traces"] = data[2]["traces"][:2] + [data[2]["traces"][0]]
    data[4]["traces"] = [" ".join([data[4]["traces"][0]] * 20)]
    args = cpu_args(tmp_path, max_length=96, max_steps=1)
    trainer = SSFTTrainer(model=tiny_models["tied"], args=args, train_dataset=Dataset.from_list(data))
    out = capsys.readouterr().out
    assert "SSFT data (train): 6 rows, 20 traces" in out
    assert "1 traces truncated to max_length" in out and "1 duplicate traces (0 dropped)" in out
    assert trainer.state.global_step == 0
    bad = [dict(r) for r in rows[:4]]
    bad[3] = dict(bad[3], prompt=[{"role": "user", "content": "tell me <think3>"}])
    with pytest.raises(SSFTDataError, match=r"eval dataset, row 3, field 'prompt\[0\].content': contains the "
                       r"forking-token text '<think3>'"):
        SSFTTrainer(model=tiny_models["tied"], args=args, train_dataset=Dataset.from_list(data),
                    eval_dataset=Dataset.from_list(bad))
