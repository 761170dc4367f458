"""Building SSFT training sets: sources -> candidates -> verify -> select -> ssft rows, and their report.

    teachers / public sets -> traces: convert (sources) | generate -> verify -> select -> report -> ssft rows

- `sources`: every public layout -> candidates (`Candidate`), presets of public datasets;
- `columns`: `row_from_columns` / `columns_to_ssft`, the light per-teacher-columns converter (one row per
  question, as the Axolotl plugin reads it);
- `templates`: a trace from its thinking and its final answer (`think`, `s1`, `plain`, a format string);
- `verify`: which candidates may train (finish reason, empty parts, grades, answers via math-verify);
- `select`: exact and near-duplicate removal (MinHash), then up to M diverse traces per question;
- `build`: all of it over a dataset, streaming through Arrow (`build(...)`, ``trl-ssft data build``);
- `report`: questions, traces, teachers, token lengths, truncation, diversity, drops (``trl-ssft data report``);
- `generate`: sample candidate traces from teacher models (vLLM offline engine, OpenAI-compatible endpoints),
  one resumable JSONL line per sample (`teachers`, `backends`, `candidates` hold its parts; docs/generate.md);
- `cli`: ``trl-ssft data build | report | generate``.
"""

from __future__ import annotations

_LAZY = {
    "build": ("trl_ssft.traces.build", "build"),
    "columns_to_ssft": ("trl_ssft.traces.columns", "columns_to_ssft"),
    "row_from_columns": ("trl_ssft.traces.columns", "row_from_columns"),
    "SourceSpec": ("trl_ssft.traces.sources", "SourceSpec"),
    "VerifyOptions": ("trl_ssft.traces.verify", "VerifyOptions"),
    "SelectOptions": ("trl_ssft.traces.select", "SelectOptions"),
    "data_report": ("trl_ssft.traces.report", "data_report"),
    "generate_candidates": ("trl_ssft.traces.generate", "generate_candidates"),
    "read_candidates": ("trl_ssft.traces.candidates", "read_candidates"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'trl_ssft.traces' has no attribute {name!r}")
