"""Run a test helper script in a subprocess (plain python or `torchrun`), with a hard timeout.

On timeout the whole process group is killed (torchrun's workers included) and the test fails with
the tail of the output, so a hang in a collective never blocks the test suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def env() -> dict:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true",
             TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return e


def run(args: list[str], timeout: float, nproc: int = 1) -> subprocess.CompletedProcess:
    """Run `tests/scripts/<args[0]>` with `args[1:]`; under `torchrun --nproc_per_node nproc` when nproc > 1."""
    script = os.path.join(HERE, args[0])
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, *args[1:]]
    else:
        cmd = [sys.executable, script, *args[1:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout}s (hang?):\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def read_records(prefix: str, ranks: int) -> list[dict]:
    out = []
    for r in range(ranks):
        with open(f"{prefix}.rank{r}.jsonl") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out
