"""Run `generate_ids_vllm` jobs in a process of their own and write the results as JSON.

    python tests/scripts/vllm_run.py spec.json out.json

spec.json: {"jobs": [{"name": ..., "model": dir, "prompts": [[ids]], "n": .., "temperature": ..,
"top_p": .., "max_new_tokens": .., "seed": .., "greedy": .., "lora": "auto"} or {"name": ..., "cli": [args of
`trl-ssft eval`]}, ...]} (a cli job's result is its exit status). Jobs run in order,
reusing cached engines (one per served model). out.json: {"results": {name: [[ids]] per prompt},
"routes": {model dir: [route, why]}, "engine_starts": int, "seconds": {name: s}, "errors": {name: msg}}.
vLLM is driven in a subprocess so its engine (threads, torch.distributed state) never touches the
pytest process; the `__main__` guard keeps it safe with a spawned engine too.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(spec_path: str, out_path: str) -> None:
    from trl_ssft.eval import vllm_backend as vb

    spec = json.load(open(spec_path))
    results, seconds, errors, routes = {}, {}, {}, {}
    for job in spec["jobs"]:
        job = dict(job)
        name = job.pop("name")
        if "cli" in job:  # `trl-ssft eval ARGS` in this process (reusing the cached engine)
            from trl_ssft.eval.cli import main as eval_main

            t = time.time()
            try:
                results[name] = eval_main(job["cli"])
            except BaseException as e:  # SystemExit from argparse included
                errors[name] = f"{type(e).__name__}: {e}"
            seconds[name] = round(time.time() - t, 2)
            continue
        model, prompts = job.pop("model"), job.pop("prompts")
        if os.path.exists(os.path.join(model, "adapter_config.json")):
            routes[model] = list(vb.adapter_plan(model))
        else:
            routes[model] = ["full", ""]
        t = time.time()
        try:
            results[name] = vb.generate_ids_vllm(model, prompts, **job)
        except Exception as e:  # reported to the test, which decides
            errors[name] = f"{type(e).__name__}: {e}"
        seconds[name] = round(time.time() - t, 2)
    engines = len(vb._ENGINES)
    vb.close_engines()
    with open(out_path, "w") as f:
        json.dump({"results": results, "routes": routes, "engines_cached": engines, "seconds": seconds,
                   "errors": errors}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
