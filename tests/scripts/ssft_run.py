"""Run `SSFTTrainer` on a tiny local model, recording what the matching did (a helper of the tests).

Used under plain `python` (one process) and `torchrun --nproc_per_node 2` (gloo on CPU). For every
micro-batch it appends one JSON line per question to ``<record>.rank<r>.jsonl``:
``{"step", "rank", "q" (crc of the prompt ids), "traces" (crc of each trace trained), "assign", "cost",
"calls" (scoring forward calls of this micro-batch), "rows" (scoring rows of this micro-batch)}``.
At the end rank 0 writes ``<out>/history.json`` (the trainer's log history).

Fault injection: ``--kill-in-save N`` SIGKILLs the process while checkpoint N is being written (after
the weights, before optimizer and trainer state); ``--kill-in-step N`` SIGKILLs it in the middle of
step N (after the matching, before the loss).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import zlib

import numpy as np


def crc(ids) -> int:
    return zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a JSON list of ssft rows")
    ap.add_argument("--out", required=True)
    ap.add_argument("--record", default=None)
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--bs", type=int, default=2)
    ap.add_argument("--ga", type=int, default=1)
    ap.add_argument("--save-steps", type=int, default=0)
    ap.add_argument("--num-fork", type=int, default=6)
    ap.add_argument("--policy", default="error")
    ap.add_argument("--match-max-tokens", type=int, default=16384)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-in-save", type=int, default=-1)
    ap.add_argument("--kill-in-step", type=int, default=-1)
    a = ap.parse_args()

    import torch
    from datasets import Dataset

    from trl_ssft import SSFTConfig, SSFTTrainer

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rows = json.load(open(a.data))
    args = SSFTConfig(
        output_dir=a.out, bf16=False, use_cpu=True, report_to=[], max_length=256,
        per_device_train_batch_size=a.bs, gradient_accumulation_steps=a.ga, learning_rate=a.lr,
        logging_steps=1, max_steps=a.max_steps, seed=0, dataloader_num_workers=0, disable_tqdm=True,
        save_strategy="steps" if a.save_steps else "no", save_steps=a.save_steps or 500,
        gradient_checkpointing=False, ssft_num_fork_tokens=a.num_fork, ssft_max_traces_policy=a.policy,
        ssft_match_max_tokens=a.match_max_tokens, lr_scheduler_type="constant", warmup_steps=0,
        **({"ddp_backend": "gloo", "ddp_timeout": 120} if world > 1 else {}),
    )
    calls = {"n": 0}
    record = open(f"{a.record}.rank{rank}.jsonl", "a") if a.record else None

    class Recording(SSFTTrainer):
        def ssft_cost_matrices(self, prompts, traces):
            self._last_costs = super().ssft_cost_matrices(prompts, traces)
            return self._last_costs

        def ssft_assignments(self, prompts, traces, mode):
            self._last_costs = None
            before = calls["n"]
            out, stats = super().ssft_assignments(prompts, traces, mode)
            n_calls = calls["n"] - before
            step = int(self.state.global_step)
            if record is not None:
                n_rows = len(self.fork_token_ids) * sum(len(ts) for ts in traces)
                for b, (p, ts) in enumerate(zip(prompts, traces)):
                    cost = None if self._last_costs is None else np.asarray(self._last_costs[b])
                    record.write(json.dumps({
                        "step": step, "rank": rank, "q": crc(p), "traces": [crc(t) for t in ts],
                        "assign": None if out[b] is None else [int(x) for x in out[b]],
                        "cost": None if cost is None else [[float(x) for x in r] for r in cost],
                        "calls": n_calls, "rows": n_rows,
                    }) + "\n")
                record.flush()
            if step + 1 == a.kill_in_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return out, stats

        def _save_optimizer_and_scheduler(self, output_dir):
            if int(self.state.global_step) == a.kill_in_save:
                os.kill(os.getpid(), signal.SIGKILL)
            return super()._save_optimizer_and_scheduler(output_dir)

    trainer = Recording(model=a.model, args=args, train_dataset=Dataset.from_list(rows))

    def count(module, inputs):
        calls["n"] += 1

    trainer.model.register_forward_pre_hook(count)
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    trainer.save_model()
    if rank == 0:
        with open(os.path.join(a.out, "history.json"), "w") as f:
            json.dump({"log_history": trainer.state.log_history, "global_step": trainer.state.global_step,
                       "match_counts": [int(c) for c in trainer.ssft_match_counts]}, f)
    from trl_ssft.distributed import shutdown

    shutdown()


if __name__ == "__main__":
    main()
