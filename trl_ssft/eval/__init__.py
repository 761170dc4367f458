"""Evaluation of SSFT models: inference (prompts per forking token, generation backends), answer
extraction and equality, metrics (Pass@1, Cons@N, Pass@k, mode tables), `evaluate_model` and the
`trl-ssft eval` command."""
