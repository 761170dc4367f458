"""The memory-bounded set loss (`trl_ssft.rows`, `trl_ssft.output_head`) against the plain path.

Reference ("old path"): ONE forward over all matched rows with labels, the model's own loss
(`model(input_ids, attention_mask, labels, num_items_in_batch).loss`), i.e. full ``[rows, S, V]`` logits.
New path: `SSFTTrainer.compute_loss`, i.e. rows in slices (earlier slices back-propagated inside) and
logits in checkpointed chunks. Loss and the gradient of every trainable parameter (forking-token rows
under LoRA/QLoRA included) must agree, tied and untied, full / LoRA / QLoRA. A dispatch-mode probe
fails the test if any tensor with a vocabulary-sized last dimension larger than the chunk budget
appears during the set loss.
"""

import pytest
import torch
from datasets import Dataset
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import cpu_args
from trl_ssft import SSFTTrainer
from trl_ssft.rows import auto_slice_tokens, plan_slices


class VocabProbe(TorchDispatchMode):
    """Records the largest number of positions of any tensor whose last dimension is the vocabulary.

    Tensors the size of the output weight ([H, V]: its transpose, its gradient) are not logits and are skipped.
    """

    def __init__(self, vocab: int, weight_numel: int):
        super().__init__()
        self.vocab, self.weight_numel, self.max_positions = vocab, weight_numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if (isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab
                    and t.numel() != self.weight_numel):
                self.max_positions = max(self.max_positions, t.numel() // self.vocab)
        return out


def _trainer(path, tmp_path, method, **kw):
    extra = {}
    if method in ("lora", "qlora"):
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                          task_type="CAUSAL_LM", lora_dropout=0.0)
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                          bnb_4bit_compute_dtype=torch.float32)
    from trl_ssft.demo.synthetic import make_rows

    args = cpu_args(tmp_path, ssft_num_fork_tokens=4, ssft_fork_init_noise=1.0, ssft_assignment="fixed",
                    ssft_fork_token_loss=True, **kw)
    return SSFTTrainer(model=path, args=args, train_dataset=Dataset.from_list(make_rows(6, seed=3)), **extra)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _old_path(trainer, batch):
    """The pre-slicing path: one forward over every matched row, the model's own loss on full logits."""
    model = trainer.model
    prompts, traces = trainer._unpack(batch)
    assignments, _ = trainer.ssft_assignments(prompts, traces)
    ids, mask, labels = trainer.ssft_build_rows(prompts, traces, assignments)
    denom = int(labels[:, 1:].ne(-100).sum())
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=denom, use_cache=False).loss
    loss.backward()
    return loss.item(), _grads(model), ids.shape


@pytest.mark.parametrize("kind", ["tied", "untied"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_sliced_chunked_loss_equals_plain_loss(tiny_models, tmp_path, kind, method):
    trainer = _trainer(tiny_models[kind], tmp_path, method, ssft_logits_chunk_tokens=7, ssft_loss_slice_tokens=1)
    model = trainer.model
    model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    ref_loss, ref_grads, shape = _old_path(trainer, batch)
    assert len(plan_slices([shape[1]] * shape[0], 1)) == shape[0]  # one row per slice
    weight = model.get_output_embeddings().weight
    model.zero_grad(set_to_none=True)
    probe = VocabProbe(weight.shape[0], weight.numel())
    with probe:  # as in training: the trainer passes the GA window's loss-token count and back-propagates
        loss = trainer.compute_loss(model, batch, num_items_in_batch=int(batch["ssft_num_loss_tokens"].sum()))
        loss.backward()
    assert probe.max_positions <= 7, f"{probe.max_positions} positions of logits existed at once"
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    grads = _grads(model)
    assert grads.keys() == ref_grads.keys() and grads
    if method != "full":  # the forking-token rows are among the trained parameters
        assert any("trainable_tokens" in n for n in grads), sorted(grads)
    for name, g in ref_grads.items():  # fp32 to float rounding; bf16 parameters (QLoRA's) to bf16 resolution
        tol = dict(rtol=1e-4, atol=1e-6) if g.dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2 * g.abs().max().item())
        torch.testing.assert_close(grads[name], g, msg=name, **tol)


def test_the_probe_catches_whole_logits(tiny_models, tmp_path):
    """The probe fails the old path: it builds [rows, S, V] logits."""
    trainer = _trainer(tiny_models["tied"], tmp_path, "full")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    weight = trainer.model.get_output_embeddings().weight
    probe = VocabProbe(weight.shape[0], weight.numel())
    with probe:
        _, _, shape = _old_path(trainer, batch)
    assert probe.max_positions >= shape[0] * shape[1]


def test_slice_budget_and_chunk_size_do_not_change_the_loss(tiny_models, tmp_path):
    losses = []
    for slice_tokens, chunk in [(None, 3), (10**9, 10**9), (1, 1)]:
        trainer = _trainer(tiny_models["untied"], tmp_path / str(chunk), "full", ssft_logits_chunk_tokens=chunk,
                           ssft_loss_slice_tokens=slice_tokens)
        trainer.model.eval()
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and losses[2] == pytest.approx(losses[0], rel=1e-6)


def test_auto_slice_budget(tiny_models, tmp_path):
    """`ssft_loss_slice_tokens: None` slices rows apart only when the output layer is frozen (LoRA/QLoRA) or
    the rows' activations outweigh the extra gradient copy of a trained output layer."""
    full = _trainer(tiny_models["untied"], tmp_path / "full", "full")
    lora = _trainer(tiny_models["untied"], tmp_path / "lora", "lora")
    cfg = full.model.config
    weight = full.model.get_output_embeddings().weight
    per_token = cfg.num_hidden_layers * (10 * cfg.hidden_size + 3 * cfg.intermediate_size)
    assert auto_slice_tokens(full.model) == weight.numel() // per_token > 0
    assert auto_slice_tokens(lora.model) < 16  # only the forking-token rows train there: slice per row
    assert plan_slices([5, 9, 3, 4], None, min_budget=100) == [[1, 0, 3, 2]]
    assert plan_slices([5, 9, 3, 4], None, min_budget=0) == [[1], [0], [3, 2]]


def test_plan_slices():
    assert plan_slices([5, 9, 3, 4], None) == [[1], [0], [3, 2]]  # budget 9: 4 + 3 -> 2 x 4 = 8 fits
    assert plan_slices([5, 9, 3, 4], 100) == [[1, 0, 3, 2]]
    assert plan_slices([5, 9, 3, 4], 1) == [[1], [0], [3], [2]]  # at least one row per slice
