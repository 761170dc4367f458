"""Direct tests of three pieces that were only covered end to end: the collator's batch layout, the
per-step trace selection for M > N (`SSFTLossMixin.ssft_select_traces`) and the refusal of
context/sequence parallelism (`distributed.check_parallelism`)."""

from types import SimpleNamespace

import pytest

from trl_ssft.collator import SSFTCollator
from trl_ssft.distributed import check_parallelism
from trl_ssft.matching import get_mode
from trl_ssft.set_loss import SSFTLossMixin


def test_collator_layout_and_loss_token_counts():
    rows = [{"prompt_ids": [5, 6, 7], "trace_ids": [[1, 2], [3, 4, 5, 6]]},
            {"prompt_ids": [8], "trace_ids": [[9, 9, 9]]}]
    batch = SSFTCollator(pad_token_id=0, num_fork_tokens=4, fork_token_loss=True)(rows)
    assert batch["ssft_prompt_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["ssft_prompt_len"].tolist() == [3, 1]
    assert batch["ssft_trace_ids"].shape == (2, 2, 4)  # B, M_max, L_max
    assert batch["ssft_trace_ids"][0, 1].tolist() == [3, 4, 5, 6]
    assert batch["ssft_trace_ids"][1, 0].tolist() == [9, 9, 9, 0]
    assert batch["ssft_trace_len"].tolist() == [[2, 4], [3, 0]]  # 0 = no trace in that slot
    assert batch["ssft_num_loss_tokens"].tolist() == [2 + 4 + 2, 3 + 1]  # + one forking token per trace
    plain = SSFTCollator(pad_token_id=0, num_fork_tokens=4, assignment="none", fork_token_loss=True)(rows)
    assert plain["ssft_num_loss_tokens"].tolist() == [6, 3]  # SFT-mixed: no forking token to train


def _selector(policy="subsample", mode="hungarian", n=2, seed=3, step=0):
    sel = SSFTLossMixin()
    sel.fork_token_ids = list(range(100, 100 + n))
    sel.ssft_args = SimpleNamespace(ssft_max_traces_policy=policy, ssft_assignment=mode, ssft_seed=seed)
    sel.ssft_mode = get_mode(mode)
    sel.args = SimpleNamespace(seed=0)
    sel.state = SimpleNamespace(global_step=step)
    return sel


def test_trace_selection_subsamples_deterministically_per_step_and_question():
    prompts = [[1, 2], [3, 4]]
    traces = [[[10], [11], [12], [13]], [[20], [21]]]
    first = _selector(step=5).ssft_select_traces(prompts, traces)
    assert first[1] == traces[1]  # M <= N: untouched
    assert len(first[0]) == 2 and all(t in traces[0] for t in first[0])
    assert first[0] == sorted(first[0])  # kept in their original order
    again = _selector(step=5).ssft_select_traces(prompts, traces)
    assert again == first  # same (seed, step, question) -> same draw (every process, after a resume)
    draws = {str(_selector(step=s).ssft_select_traces(prompts, traces)[0]) for s in range(20)}
    assert len(draws) > 1  # redrawn each step


def test_trace_selection_refuses_or_ignores():
    prompts, traces = [[1]], [[[10], [11], [12]]]
    with pytest.raises(ValueError, match=r"3 traces but there are only 2 forking tokens"):
        _selector(policy="error").ssft_select_traces(prompts, traces)
    assert _selector(policy="error", mode="none").ssft_select_traces(prompts, traces) == traces  # SFT-mixed


@pytest.mark.parametrize("where", ["accelerator", "args"])
@pytest.mark.parametrize("attr", ["cp_size", "sp_size"])
def test_context_parallelism_is_refused(where, attr):
    pc = SimpleNamespace(**{attr: 2})
    trainer = SimpleNamespace(accelerator=SimpleNamespace(parallelism_config=pc if where == "accelerator" else None),
                              args=SimpleNamespace(parallelism_config=pc if where == "args" else None))
    with pytest.raises(ValueError, match=rf"context/sequence parallelism \({attr}=2\)"):
        check_parallelism(trainer)


def test_data_parallel_layouts_pass():
    for pc in (None, SimpleNamespace(cp_size=1, sp_size=1), SimpleNamespace(dp_shard_size=8)):
        check_parallelism(SimpleNamespace(accelerator=SimpleNamespace(parallelism_config=pc),
                                          args=SimpleNamespace(parallelism_config=None)))


def test_shutdown_destroys_the_process_group(tmp_path):
    """The CLIs end with `shutdown()`: left alive, a gloo group can abort the process at exit (exit -6)."""
    import torch.distributed as dist

    from trl_ssft.distributed import shutdown

    shutdown()  # no group: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown()
    assert not dist.is_initialized()
