"""columns_to_ssft: one column per teacher (s1K-1.1 layout) -> ssft rows."""

from datasets import Dataset

from trl_ssft.converters import columns_to_ssft
from trl_ssft.data import validate_row


def test_one_column_per_teacher_to_ssft():
    ds = Dataset.from_list([
        {"question": "q1", "deepseek_thinking_trajectory": "a", "gemini_thinking_trajectory": "b", "solution": 3},
        {"question": "q2", "deepseek_thinking_trajectory": "", "gemini_thinking_trajectory": "c", "solution": 4},
        {"question": "q3", "deepseek_thinking_trajectory": None, "gemini_thinking_trajectory": " ", "solution": 5},
    ])
    out = columns_to_ssft(ds, "question", ["deepseek_thinking_trajectory", "gemini_thinking_trajectory"],
                          answer_column="solution", system_prompt="think")
    rows = out.to_list()
    assert len(rows) == 2  # q3 has no usable trace
    assert rows[0]["traces"] == ["a", "b"] and rows[0]["answer"] == "3"
    assert rows[0]["trace_sources"] == ["deepseek_thinking_trajectory", "gemini_thinking_trajectory"]
    assert rows[0]["prompt"] == [{"role": "system", "content": "think"}, {"role": "user", "content": "q1"}]
    assert rows[1]["traces"] == ["c"] and rows[1]["trace_sources"] == ["gemini_thinking_trajectory"]
    for i, r in enumerate(rows):
        validate_row(r, i, num_fork_tokens=6)


def test_missing_column_is_named():
    import pytest

    ds = Dataset.from_list([{"question": "q", "a": "x"}])
    with pytest.raises(ValueError, match=r"\['b'\]"):
        columns_to_ssft(ds, "question", ["a", "b"])
