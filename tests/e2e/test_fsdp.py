"""SSFT under real FSDP2 on CPU, and the Axolotl FSDP2 recipe through Axolotl's own config validation.

`SSFTTrainer(fsdp=...)` on CPU proves nothing: accelerate enables FSDP only for accelerator devices and
the model ends up as plain DDP (INTEGRATION.md, "FSDP on CPU"). So `tests/scripts/fsdp_run.py` applies
`torch.distributed.fsdp.fully_shard` itself (gloo, 2 processes) and runs the two hot paths on the
sharded model with uneven work per rank (rank 0: 3 questions / 11 traces, rank 1: 1 question / 2
traces): the matching pass (`cost_matrices`) and the set loss in slices and chunks (`sliced_set_loss`,
earlier slices back-propagated through ``backward``). Every case is compared with a one-process,
unsharded reference on all questions: costs (1e-5), Hungarian assignments (identical), loss (sum over
ranks) and the full gradient of every parameter (rtol 1e-4). Cases (fsdp_run.CASES): tied Qwen2 and
untied Llama with FSDP2's defaults; the layout Accelerate / Axolotl build for the 32B recipe
(``reshard_after_forward=True`` on every unit, the root included, checkpointed layers) with the earlier
slices under Accelerate's FSDP2 ``no_sync``; the output layer as its own FSDP unit; the padding-free set
loss (packed rows, sdpa) against the padded reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from scripts.runner import REPO, run

TIMEOUT = 240  # a hang in a collective fails the test instead of blocking the suite
CASES = ("qwen2", "llama", "qwen2_accelerate", "llama_head", "qwen2_packed")
RECIPE = f"{REPO}/examples/yaml/axolotl_full_32b_fsdp.yaml"


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    import torch.distributed

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    pytest.importorskip("torch.distributed.fsdp").fully_shard  # FSDP2
    out = tmp_path_factory.mktemp("fsdp")
    proc = run(["fsdp_run.py", "--out", str(out)], TIMEOUT, nproc=2)
    assert proc.returncode == 0, proc.stdout[-8000:]
    return {c: {r: json.loads((out / f"{c}.rank{r}.json").read_text()) for r in (0, 1)} for c in CASES}


@pytest.mark.parametrize("case", CASES)
def test_parameters_are_sharded_dtensors(fsdp, case):
    """FSDP2 really ran (not DDP): every parameter is a DTensor sharded on dim 0 across the two ranks."""
    r0, r1 = fsdp[case][0], fsdp[case][1]
    for rec in (r0, r1):
        assert rec["placements"] == ["(Shard(dim=0),)"]
        assert rec["dtensor_params"] == len(rec["full_rows"]) > 0
    for name, full in r0["full_rows"].items():
        assert r0["local_rows"][name] + r1["local_rows"][name] == full, name
        assert r0["local_rows"][name] < full, name


@pytest.mark.parametrize("case", CASES)
def test_uneven_work_is_aligned_without_hang(fsdp, case):
    r0, r1 = fsdp[case][0], fsdp[case][1]
    # different work before alignment: scoring rows and forward calls, set-loss slices ...
    assert r0["rows"] > r1["rows"]
    assert r0["own_scoring_calls"] > r1["own_scoring_calls"] >= 1
    assert r0["own_slices"] > r1["own_slices"] >= 1
    # ... the same number of scoring forward calls and of slice backwards on both ranks (it finished)
    assert r0["scoring_calls"] == r1["scoring_calls"] == r0["own_scoring_calls"]
    assert r0["slice_backwards"] == r1["slice_backwards"] == r0["own_slices"] - 1 > 1
    assert r0["shared_prefix"] and r1["shared_prefix"]


@pytest.mark.parametrize("case", CASES)
def test_costs_and_assignments_equal_one_process(fsdp, case):
    ref = fsdp[case][0]
    for rank in (0, 1):
        rec = fsdp[case][rank]
        for b, cost, assign in zip(rec["questions"], rec["costs"], rec["assign"]):
            np.testing.assert_allclose(cost, ref["ref_costs"][b], atol=1e-5, rtol=0, err_msg=f"{case} q{b}")
            assert assign == ref["ref_assign"][b], (case, b)
    assert sorted(fsdp[case][0]["questions"] + fsdp[case][1]["questions"]) == list(range(len(ref["ref_assign"])))


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_equal_one_process(fsdp, case):
    ref = fsdp[case][0]
    for rank in (0, 1):
        assert fsdp[case][rank]["loss_total"] == pytest.approx(ref["ref_loss"], rel=1e-4)
    assert set(ref["grad_rel_diff"]) == set(ref["full_rows"])  # every parameter compared (full_tensor)
    worst = max(ref["grad_rel_diff"].values())
    assert worst < 1e-4, sorted(ref["grad_rel_diff"].items(), key=lambda kv: -kv[1])[:3]


def test_fsdp2_no_sync_holds_unsharded_gradients(fsdp):
    """Accelerate's FSDP2 `no_sync` (what SSFTTrainer wraps earlier slices in) skips the reduce-scatter, so
    every rank keeps a full-size gradient of the whole model between slices; without it each slice's
    backward reduce-scatters and only the shards stay."""
    for rank in (0, 1):
        held = fsdp["qwen2_accelerate"][rank]["held_unsharded_grad_elements"]
        assert held and all(h == fsdp["qwen2_accelerate"][rank]["param_elements"] for h in held)
        assert set(fsdp["qwen2"][rank]["held_unsharded_grad_elements"]) == {0}


# ------------------------------------------------------------------ the Axolotl FSDP2 recipe
@pytest.mark.axolotl
def test_axolotl_fsdp_recipe_passes_axolotl_validation(tiny_models, tmp_path, monkeypatch):
    """examples/yaml/axolotl_full_32b_fsdp.yaml through Axolotl 0.19's own validation, plugin registered: as on
    the 8-GPU target (`validate_config` with those capabilities) and through the CLI's loader on this CPU.
    Every key must survive validation unchanged (none dropped or renamed), FSDP2 included."""
    pytest.importorskip("axolotl")
    from axolotl.cli.config import load_cfg
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.schemas.fsdp import FSDPConfig

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    raw = yaml.safe_load(open(RECIPE))
    assert raw["fsdp_version"] == 2
    unknown = set(raw["fsdp_config"]) - set(FSDPConfig.model_fields)
    assert not unknown, unknown
    local = {"base_model": tiny_models["tied"], "output_dir": str(tmp_path / "out"),
             "dataset_prepared_path": str(tmp_path / "prepared")}  # no 32B download, nothing written in the repo

    cfg = DictDefault({**raw, **local})
    prepare_plugins(cfg)
    caps = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 8, "compute_capability": "sm_90"}
    out = validate_config(cfg, capabilities=caps, env_capabilities={"torch_version": "2.13.0"})
    for key, value in raw.items():
        if key not in local and key not in ("datasets", "fsdp_config", "plugins"):
            assert out[key] == value, (key, value, out.get(key))
    assert out["fsdp_version"] == 2
    assert {k: v for k, v in out["fsdp_config"].items() if k != "fsdp_version"} == raw["fsdp_config"]
    assert out["fsdp_config"].get("fsdp_version") in (None, 2)

    loaded = load_cfg(RECIPE, **local)  # the CLI's loader: plugin hooks, validation, normalisation
    assert loaded.fsdp_version == 2 and loaded.fsdp_config["reshard_after_forward"] is True
    assert loaded.special_tokens["additional_special_tokens"] == [f"<think{i}>" for i in range(1, 7)]
