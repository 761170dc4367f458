"""`trl_ssft.traces` generation, the parts that need no model: the candidates file (resume, torn tail,
retry), questions (ids, bad rows), teacher configs, per-sample seeds, and the reading of a chat
completion (thinking in `reasoning_content` / `reasoning`) on objects of the real `openai` types.
The generation itself (vLLM offline, `vllm serve`, dead endpoints) is tests/e2e/test_generate.py."""

from __future__ import annotations

import json

import pytest

from trl_ssft.checks import SSFTDataError
from trl_ssft.traces.candidates import CandidatesFile, key_of, make_record, read_candidates
from trl_ssft.traces.generate import Question, normalize_questions, stable_id
from trl_ssft.traces.teachers import Teacher, load_teachers, messages_for, sample_seed

Q = Question("q0", "what is 2+2?", "4")


def _write(path, recs, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)


def test_candidates_resume_drops_torn_tail_and_reports_done_and_failed(tmp_path):
    p = tmp_path / "c.jsonl"
    good = make_record(Q, "t", 0, response="4", finish_reason="stop")
    bad = make_record(Q, "t", 1, error="APITimeoutError: Request timed out.")
    whole_no_newline = json.dumps(make_record(Q, "t", 2, response="x", finish_reason="stop"))
    for tail in ('{"question_id": "q0", "prom', whole_no_newline):  # partial JSON; a whole object without "\n"
        _write(p, [good, bad], tail)
        with CandidatesFile(str(p)) as cf:
            done, failed = cf.open()
            assert done == {("q0", "t", 0)} and failed == {("q0", "t", 1)}
            cf.append(make_record(Q, "t", 2, response="y", finish_reason="stop"))
        recs = list(read_candidates(str(p)))
        assert [key_of(r) for r in recs] == [("q0", "t", 0), ("q0", "t", 1), ("q0", "t", 2)]
        assert recs[2]["response"] == "y"


def test_candidates_retry_removes_only_the_chosen_error_lines(tmp_path):
    p = tmp_path / "c.jsonl"
    recs = [make_record(Q, "a", 0, error="e"), make_record(Q, "b", 0, error="e"),
            make_record(Q, "a", 1, response="r", finish_reason="stop")]
    _write(p, recs)
    with CandidatesFile(str(p)) as cf:
        done, failed = cf.open(retry=lambda key: key[1] == "a")
    assert done == {("q0", "a", 1)} and failed == {("q0", "b", 0)}
    assert [key_of(r) for r in read_candidates(str(p))] == [("q0", "b", 0), ("q0", "a", 1)]


def test_candidates_corrupt_middle_line_or_duplicate_is_an_error(tmp_path):
    p = tmp_path / "c.jsonl"
    rec = make_record(Q, "t", 0, response="4", finish_reason="stop")
    p.write_text(json.dumps(rec) + "\n{oops\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        CandidatesFile(str(p)).open()
    _write(p, [rec, rec])
    with pytest.raises(ValueError, match="line 2: sample .* appears twice"):
        CandidatesFile(str(p)).open()
    _write(p, [{"question_id": "q0"}])
    with pytest.raises(ValueError, match="missing key"):
        CandidatesFile(str(p)).open()


def test_questions_ids_answers_and_duplicates(caplog):
    msgs = [{"role": "user", "content": "hi"}]
    qs = normalize_questions([{"prompt": "a"}, {"prompt": msgs, "answer": 7}, {"prompt": "a"},
                              {"question_id": 12, "prompt": "b", "answer": None}])
    assert [q.question_id for q in qs] == [stable_id("a"), stable_id(msgs), "12"]
    assert stable_id("a") == stable_id("a") != stable_id("a ") and stable_id("a").startswith("q")
    assert qs[1].answer == "7" and qs[2].answer is None
    assert "dropped 1 question" in caplog.text
    with pytest.raises(SSFTDataError, match="row 1, field 'id'.*repeats row 0"):
        normalize_questions([{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}], id_field="id")
    with pytest.raises(SSFTDataError, match="row 1, field 'question'.*missing"):
        normalize_questions([{"question": "a"}, {"prompt": "b"}], prompt_field="question")
    with pytest.raises(SSFTDataError, match="row 0, field 'prompt'.*user turn"):
        normalize_questions([{"prompt": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(SSFTDataError, match="row 0, field 'answer'"):
        normalize_questions([{"prompt": "a", "answer": ["4"]}])


def test_teacher_file_defaults_flags_and_errors(tmp_path, monkeypatch):
    f = tmp_path / "teachers.yaml"
    f.write_text("defaults: {samples: 2, temperature: 0.6}\n"
                 "teachers:\n"
                 "  - {model: /m/Qwen3-8B, tensor_parallel_size: 2, temperature: 1.0}\n"
                 "  - {name: api, model: deepseek-reasoner, base_url: 'http://x/v1', max_concurrency: 4}\n")
    local, api = load_teachers(str(f))
    assert (local.name, local.backend, local.samples, local.temperature) == ("Qwen3-8B", "vllm", 2, 1.0)
    assert (api.backend, api.samples, api.temperature, api.max_concurrency) == ("openai", 2, 0.6, 4)
    # a set flag overrides every teacher; a flag teacher is added
    ts = load_teachers(str(f), overrides={"samples": 5}, flag_teacher={"model": "m2", "base_url": "http://y/v1"})
    assert [t.samples for t in ts] == [5, 5, 5] and ts[2].name == "m2" and ts[2].backend == "openai"
    with pytest.raises(ValueError, match=r"teachers\[0\]: unknown option\(s\) \['temprature'\]"):
        f.write_text("teachers: [{model: m, temprature: 1}]")
        load_teachers(str(f))
    with pytest.raises(ValueError, match="'tensor_parallel_size' applies to the vllm backend only"):
        Teacher(name="x", backend="openai", model="m", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="'base_url' applies to the openai backend only"):
        Teacher(name="x", backend="vllm", model="m", base_url="http://x")
    from trl_ssft.traces.backends import BACKENDS
    from trl_ssft.traces.teachers import BACKEND_OPTIONS

    assert set(BACKENDS) == set(BACKEND_OPTIONS)  # one name per backend in both tables
    with pytest.raises(ValueError, match="unknown backend 'sglang'"):
        Teacher(name="x", backend="sglang", model="m")
    with pytest.raises(ValueError, match="'samples' must be an integer >= 1"):
        Teacher(name="x", backend="vllm", model="m", samples=0)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="'NO_SUCH_KEY_VAR' .* is not set"):
        Teacher(name="x", backend="openai", model="m", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ValueError, match="must be unique, repeated: \\['m'\\]"):
        f.write_text("[{model: m}, {model: m, base_url: 'http://x'}]")
        load_teachers(str(f))


def test_sample_seed_and_messages():
    assert sample_seed(0, "q1", 2) == sample_seed(0, "q1", 2)
    seeds = {sample_seed(s, q, k) for s in (0, 1) for q in ("q1", "q2") for k in range(4)}
    assert len(seeds) == 16 and all(0 <= s < 2**31 for s in seeds)
    assert sample_seed(None, "q1", 0) is None
    assert messages_for("hi", "sys") == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    assert messages_for(own, "sys") == own and messages_for("hi", None) == [{"role": "user", "content": "hi"}]


def _completion(message: dict, finish_reason: str = "stop", choices: bool = True):
    ChatCompletion = pytest.importorskip("openai.types.chat").ChatCompletion  # the `data` extra

    return ChatCompletion.model_validate({
        "id": "c1", "object": "chat.completion", "created": 0, "model": "served",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", **message}}]
        if choices else [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})


def test_parse_chat_completion_reasoning_fields():
    """The reasoning field under both names it has in the wild, on the real openai response types:
    `reasoning_content` (DeepSeek's API, older vLLM) and `reasoning` (vLLM 0.32)."""
    from trl_ssft.traces.backends import parse_chat_completion

    ds = parse_chat_completion(_completion({"content": "The answer is 4.", "reasoning_content": "2+2=4"}))
    assert (ds["thinking"], ds["response"], ds["finish_reason"]) == ("2+2=4", "The answer is 4.", "stop")
    assert ds["usage"]["completion_tokens"] == 7 and ds["model"] == "served" and "error" not in ds
    vl = parse_chat_completion(_completion({"content": None, "reasoning": "long thought"}, "length"))
    assert (vl["thinking"], vl["response"], vl["finish_reason"]) == ("long thought", "", "length")
    plain = parse_chat_completion(_completion({"content": "<think>t</think>4"}))
    assert plain["thinking"] is None and plain["response"] == "<think>t</think>4"
    refused = parse_chat_completion(_completion({"content": None, "refusal": "I can't"}, "content_filter"))
    assert refused["error"] == "refusal: I can't"
    assert parse_chat_completion(_completion({}, choices=False))["error"] == "the response has no choices"


def test_data_parallel_device_slices():
    from trl_ssft.traces.backends import device_slices

    assert device_slices(["0", "1", "2", "3", "4", "5", "6", "7"], 4, 2) == [["0", "1"], ["2", "3"], ["4", "5"],
                                                                               ["6", "7"]]
    assert device_slices(["3", "5", "7"], 3, 1) == [["3"], ["5"], ["7"]]  # the visible ids, in order
    with pytest.raises(ValueError, match="teacher big: data_parallel_size 2 x tensor_parallel_size 4 needs 8 GPUs, "
                                         "6 visible"):
        device_slices([str(i) for i in range(6)], 2, 4, "big")
