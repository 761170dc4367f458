"""Data-parallel evaluation (`trl_ssft.eval.vllm_workers`): prompts are shared round-robin between worker processes,
each on its own group of `tensor_parallel_size` GPUs, and every finished sample reaches the caller exactly once. The
workers run a stand-in for the vLLM engine (tests/scripts/fake_stream.py); the real engine under data parallelism
needs GPUs (docs/paper_protocol.md: checked on CPU only through this stand-in)."""

from __future__ import annotations

import pytest

from trl_ssft.eval.vllm_workers import shard_devices, stream_data_parallel

FAKE = "scripts.fake_stream:stream"


def test_devices_per_worker():
    assert shard_devices(2, 2, "0,1,2,3") == ["0,1", "2,3"]
    assert shard_devices(4, 1, "3,2,1,0") == ["3", "2", "1", "0"]
    with pytest.raises(ValueError, match="needs 4 GPUs, 3 are visible"):
        shard_devices(2, 2, "0,1,2")


def test_every_sample_once_from_its_worker(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    prompts = [[k, k + 1] for k in range(7)]
    got = []
    stream_data_parallel("m", prompts, seeds=[100 + k for k in range(7)], on_done=got.extend, data_parallel_size=2,
                         tensor_parallel_size=2, stream=FAKE)
    assert sorted(j for j, _ in got) == list(range(7))
    by = dict(got)
    for j in range(7):  # worker j % 2 holds prompts j, j + 2, ...; its GPUs are 4,5 or 6,7
        assert by[j] == [100 + j, 4 if j % 2 == 0 else 6, 4 if j % 2 == 0 else 3]


def test_a_failing_worker_raises():
    with pytest.raises(RuntimeError, match="engine could not start"):
        stream_data_parallel("fail", [[1], [2]], seeds=[0, 1], on_done=lambda done: None, data_parallel_size=2,
                             stream=FAKE)
