"""The light converter of one-column-group-per-teacher datasets (s1K-1.1 style) into ssft rows: the source shape
of `sources.py` read row by row and laid out / filtered by `verify.py`, without `build`'s answer check and diverse
choice. Used by `trl_ssft.columns_to_ssft` and by the Axolotl plugin's column keys (`axolotl_ssft/ssft.py`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from .sources import SourceSpec, check_columns, format_counts, from_columns, resolve_spec
from .verify import Verifier, VerifyOptions, verify_question

logger = logging.getLogger(__name__)


def row_from_columns(row: dict, spec: SourceSpec, index: int = 0, verifier=None,
                     dataset: str = "source") -> tuple[dict | None, Counter]:
    """One row of a one-column-group-per-teacher layout -> (ssft row or None, Counter of drop reasons).

    The ssft row is ``{"prompt", "traces", "trace_sources", "answer"}``: each trace laid out by the
    template (thinking, then the final answer), traces graded wrong dropped (`verify.Verifier`; by default
    no answer check: that is `trl-ssft data build`'s). None when no trace is left. The Axolotl plugin's
    `ssft_prompt_column` / `ssft_trace_columns` / `ssft_final_columns` / ... keys call this function.
    """
    verifier = verifier or Verifier(VerifyOptions(check_answers="never"))
    cands = from_columns(row, index, spec, dataset)
    traces, teachers, counts = verify_question(cands, verifier)
    if not traces:
        return None, counts
    return {"prompt": cands[0].prompt, "traces": traces, "trace_sources": teachers, "answer": cands[0].answer}, counts


def columns_to_ssft(dataset, prompt_column: str, trace_columns: Sequence[str], answer_column: str | None = None,
                    system_prompt: str | None = None, as_messages: bool = True, *,
                    final_columns: Sequence[str] = (), grade_columns: Sequence[str] = (),
                    trace_sources: Sequence[str] = (), answer_from: str = "value", template: str | None = "think",
                    keep_incorrect: bool = False):
    """A one-column-group-per-teacher `datasets.Dataset` -> ssft rows (`row_from_columns` on each row).

    s1K-1.1 (traces end with their answers; "No"-graded ones dropped)::

        columns_to_ssft(ds, "question", ["deepseek_thinking_trajectory", "gemini_thinking_trajectory"],
                        final_columns=["deepseek_attempt", "gemini_attempt"],
                        grade_columns=["deepseek_grade", "gemini_grade"], trace_sources=["deepseek", "gemini"],
                        answer_column="solution", answer_from="boxed")

    Drops are counted and logged (`logging`, this module's logger); rows left with no trace are removed.
    Verification against the reference and the choice of M diverse traces: `trl_ssft.traces.build`.
    """
    spec = resolve_spec(SourceSpec(shape="columns", prompt_column=prompt_column, trace_columns=list(trace_columns),
                                   final_columns=list(final_columns), grade_columns=list(grade_columns),
                                   trace_sources=list(trace_sources), answer_column=answer_column,
                                   answer_from=answer_from, system_prompt=system_prompt, as_messages=as_messages))
    check_columns(spec, dataset.column_names, "columns_to_ssft")
    verifier = Verifier(VerifyOptions(template=template, check_answers="never", keep_incorrect=keep_incorrect))
    counts: Counter = Counter()

    def convert(batch, indices):
        out = {"prompt": [], "traces": [], "trace_sources": [], "answer": []}
        for k, i in enumerate(indices):
            row, c = row_from_columns({col: batch[col][k] for col in batch}, spec, i, verifier, "columns_to_ssft")
            counts.update(c)
            if row is not None:
                for key in out:
                    out[key].append(row[key])
        return out

    out = dataset.map(convert, batched=True, with_indices=True, remove_columns=dataset.column_names,
                      load_from_cache_file=False)  # the drops are counted while mapping
    if counts:
        logger.warning("columns_to_ssft: %s; %d of %d rows kept", format_counts(counts),
                                            len(out), len(dataset))
    return out


__all__ = ["columns_to_ssft", "row_from_columns"]
