"""Evaluation of SSFT models, one module per concern.

- `inference`: model loading, prompts per forking token, HF generation, the model's own token choice;
- `answers`: answer extraction, normalisation, equality;
- `metrics`: Pass@1, Cons@N, Cons@k, Pass@k, distinct answers, mode tables (one function each);
- `evaluate`: `evaluate_model`, the library entry (scoring rules in `EvalRules`);
- `modes`: mode classifiers (a small registry);
- `report`: text table, JSON, heat map;
- `cli`: the `trl-ssft eval` command line.
"""
