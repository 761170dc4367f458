"""Long traces: the length distribution is printed next to max_length before training, and a run where more than
`ssft_max_truncated_share` of the traces would lose their end token stops, in both front ends, with the fixes."""

from __future__ import annotations

import pytest
from datasets import Dataset

from conftest import cpu_args
from trl_ssft.config import SSFTFields, fork_token_names, validate_ssft_fields
from trl_ssft.data import SSFTDataError, finalize_tokenized, prepare_ssft_dataset
from trl_ssft.tokens import fork_token_ids


@pytest.fixture(scope="module")
def tok():
    from trl_ssft.demo.tiny import build_tiny_tokenizer

    t = build_tiny_tokenizer(["add 12 34 56", "12 + 34 = 46 . answer", "abc xyz 0123456789"], vocab_size=300)
    t.add_special_tokens({"additional_special_tokens": [f"<think{i}>" for i in range(1, 7)]})
    return t


def _rows(n_long: int, n: int = 10, long_len: int = 40) -> list[dict]:
    """n rows of prompt 5 + one trace; `n_long` traces of `long_len` tokens, the rest of 4..13 tokens."""
    return [{"prompt_ids": [5, 6, 7, 8, 9], "trace_ids": [[11] * (long_len if k < n_long else 4 + k)]}
            for k in range(n)]


KW = dict(fork_ids=[], fork_names=[], num_fork_tokens=None, max_traces_policy="error", assignment="hungarian",
          duplicate_policy="keep", long_policy="truncate", max_length=20, vocab_size=300)


def _lines(out: str) -> list[str]:
    return [s for s in out.splitlines() if s.startswith(("SSFT data (", "SSFT trace lengths ("))]


def test_length_line_and_the_threshold(capsys):
    _, report = finalize_tokenized(Dataset.from_list(_rows(1)), **KW)  # 1 of 10 traces cut: 10 %, allowed
    out = capsys.readouterr().out
    assert report.truncated == 1
    # lengths 5..13 and 40 (percentiles: the nearest length at or above)
    assert ("SSFT trace lengths (train, tokens with the end token): p50 10, p90 40, max 40; prompt + forking token "
            "+ trace: p90 46, max 46; max_length 20: 1 of 10 traces (10.0%) do not fit") in out
    with pytest.raises(SSFTDataError) as e:
        finalize_tokenized(Dataset.from_list(_rows(2)), **KW)  # 2 of 10: 20 % > 10 %
    msg = str(e.value)
    assert "train dataset, field 'traces': 2 of 10 traces (20.0%) are longer than max_length=20" in msg
    assert "more than ssft_max_truncated_share=0.1" in msg and "p50 11, p90 40, max 40" in msg
    assert ("raise max_length (Axolotl: sequence_len) to 46 (fits every trace), or set ssft_long_traces: drop, or "
            "accept the truncation with a higher ssft_max_truncated_share (1.0 accepts any)") in msg
    # the fixes the message names all work
    _, r = finalize_tokenized(Dataset.from_list(_rows(2)), **dict(KW, max_length=46))
    assert r.truncated == 0
    _, r = finalize_tokenized(Dataset.from_list(_rows(2)), **dict(KW, long_policy="drop"))
    assert r.dropped_long == 2 and r.truncated == 0
    _, r = finalize_tokenized(Dataset.from_list(_rows(2)), **dict(KW, max_truncated_share=0.2))
    assert r.truncated == 2
    _, r = finalize_tokenized(Dataset.from_list(_rows(2)), **dict(KW, max_length=None))
    assert "no max_length" in capsys.readouterr().out


def test_both_front_ends_print_and_stop_alike(tok, tmp_path, capsys):
    """TRL (`prepare_ssft_dataset`, run by `SSFTTrainer.__init__`) and Axolotl (`finalize_dataset`, run by the
    plugin's `load_datasets`) print the same lines and raise the same error on the same rows."""
    from axolotl_ssft.ssft import finalize_dataset

    def both(rows, **fields):
        cfg = cpu_args(tmp_path, max_length=20, **fields)
        settings = SSFTFields(**fields)
        ids = fork_token_ids(tok, fork_token_names(settings))
        outcome = []
        for run in (lambda: prepare_ssft_dataset(Dataset.from_list(rows), tok, cfg, 20, "eval"),
                    lambda: finalize_dataset(Dataset.from_list(rows), settings, ids, fork_token_names(settings), 20,
                                             "eval")):
            try:
                run()
                outcome.append(("ok", _lines(capsys.readouterr().out)))
            except SSFTDataError as e:
                outcome.append((str(e).replace("'prompt_ids/trace_ids'", "'traces'"), _lines(capsys.readouterr().out)))
        return outcome

    trl, axolotl = both(_rows(3))
    assert trl == axolotl and "eval dataset, field 'traces': 3 of 10 traces (30.0%)" in trl[0]
    assert len(trl[1]) == 2 and trl[1][1].startswith("SSFT trace lengths (eval, ")
    trl, axolotl = both(_rows(3), ssft_max_truncated_share=1.0)
    assert trl == axolotl and trl[0] == "ok" and "3 traces truncated to max_length" in trl[1][0]


def test_trainer_stops_before_training(tiny_models, rows, tmp_path, capsys):
    """TRL's default max_length (1024) against 4k-token traces is the case this guards: the trainer stops at init."""
    from trl_ssft import SSFTTrainer

    data = [{"prompt": r["prompt"], "traces": [" ".join([t] * 30) for t in r["traces"]]} for r in rows[:4]]
    with pytest.raises(SSFTDataError, match=r"are longer than max_length=64 allows"):
        SSFTTrainer(model=tiny_models["tied"], args=cpu_args(tmp_path, max_length=64), train_dataset=data)
    assert "SSFT trace lengths (train" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [-0.1, 1.5, "all"])
def test_share_is_validated(bad):
    with pytest.raises(ValueError, match="ssft_max_truncated_share must be a number in"):
        validate_ssft_fields(SSFTFields(ssft_max_truncated_share=bad))
