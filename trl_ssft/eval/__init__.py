"""Evaluation of SSFT models, one module per concern.

- `tasks`: benchmark presets (dataset, prompt, answer rule, protocol, differences from the authors; a registry);
- `questions`: reading data files, normalising rows;
- `inference`: model loading, prompts per forking token (in the model's layout), HF generation, the model's own
  token choice;
- `sampling`: per-sample seeds, the samples file (written as samples finish, ``resume``), the generation call over
  the HF and vLLM backends, the progress bar;
- `vllm_backend` (`vllm_adapters`, `vllm_workers`): vLLM generation, adapters, data-parallel engines;
- `answers`: answer extraction, normalisation, equality; `rules`: the scoring rules and sample scoring;
- `metrics`: Pass@1, Cons@N, Cons@k, Pass@k, distinct answers, mode tables (one function each);
- `self_choice`: the model's own forking token; `modes`: mode classifiers (a small registry);
- `evaluate`: `evaluate_model`, the library entry;
- `report`: text table, JSON, heat map; `cli`: the `trl-ssft eval` command line.
"""
