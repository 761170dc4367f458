"""What SSFT does with each option of a recipe (an Axolotl YAML or a TRL `SFTConfig`): one table, its checks
and the lines printed at the start of a run.

Every row of `OPTIONS` names an option of one front end, what SSFT does with it (its *status*), why, and
how that was checked (the `docs/recipes.md` table is rendered from these rows; `tests/unit/test_recipe_options.py`
keeps the two equal). Statuses:

- ``kept``: the option does its job in SSFT's forwards (the no-grad matching pass and the set loss) as in SFT;
- ``mapped``: SSFT does the same job its own way (e.g. TRL's `chunked_nll` is SSFT's chunked output head);
- ``refused``: the run stops before training with the reason and the fix (`check_recipe`);
- ``not applied``: the option is accepted and harmless, but does nothing for SSFT's loss; the run says so at
  start (`recipe_lines`), with the reason.

Both front ends call the same two functions: `check_recipe` (the Axolotl schema's validator and
`SSFTTrainer.__init__`) and `recipe_lines` (printed by the Axolotl plugin after the trainer is built and by
`SSFTTrainer.__init__`). `cfg` is anything with ``.get(key)`` (a dict, Axolotl's `DictDefault`) or attributes
(an `SSFTConfig`).

The fused losses (Cut Cross Entropy, Liger's fused linear cross-entropy): decided from their code (no GPU was
lent; `scripts/gpu_check.sh` checks it on one). Both replace the model's forward, and both compute their fused
loss only when the forward receives ``labels``; without labels they call the model's output module
(``self.lm_head(hidden)``). SSFT never passes labels (`scoring.py`, `rows.rows_nll_sum`): it intercepts that
call and projects the hidden states through the *output module* in chunks (`output_head.py`), which keeps
PEFT's trainable forking-token rows (the fused kernels read ``lm_head.weight`` directly and would skip them)
and never builds ``[rows, length, vocabulary]`` logits. So the patched forwards run, the fused loss does not,
and nothing is materialised whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KEPT, MAPPED, REFUSED, NOT_APPLIED = "kept", "mapped", "refused", "not applied"
STATUSES = (KEPT, MAPPED, REFUSED, NOT_APPLIED)
AXOLOTL, TRL = "axolotl", "trl"
PACKED = ("the set loss runs padding-free: the matched rows of each micro-batch are packed with per-row position ids "
          "(exact: loss and gradients equal the padded rows'); a dataset row stays one question (docs/packing.md)")
PACKING_KEYS = frozenset({"sample_packing", "eval_sample_packing", "batch_flattening", "packing", "padding_free"})

CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"


def get(cfg: Any, key: str) -> Any:
    """``cfg[key]`` of a dict / `DictDefault` / dataclass config, None when absent."""
    if hasattr(cfg, "get") and not hasattr(cfg, "__dataclass_fields__"):
        return cfg.get(key)
    return getattr(cfg, key, None)


@dataclass(frozen=True)
class RecipeOption:
    """One row: `key` of front end `front`, what SSFT does with it (`status`, `what`), the `fix` of a refusal,
    and how it was `checked` (a test or a command, for the docs table).

    `engaged(cfg)` returns the value the recipe gives the option when the row applies, else None (default:
    ``cfg[key]`` when truthy). `resolve()` (optional) re-decides ``(status, what)`` at the start of a run from
    the process state (e.g. which Liger kernels are installed).
    """

    key: str
    front: str
    status: str
    what: str
    checked: str
    fix: str = ""
    engaged: Callable[[Any], Any] | None = None
    resolve: Callable[[], tuple[str, str]] | None = None

    def value(self, cfg: Any) -> Any:
        if self.engaged is not None:
            return self.engaged(cfg)
        v = get(cfg, self.key)
        return v if v else None


def _above_one(key: str) -> Callable[[Any], Any]:
    return lambda cfg: get(cfg, key) if (get(cfg, key) or 1) > 1 else None


def _plugin_on(plugin: str, key: str) -> Callable[[Any], Any]:
    """A plugin's switch: on when the plugin is listed and `key` is not false (its schema defaults it to true)."""
    def engaged(cfg: Any) -> Any:
        return True if plugin in (get(cfg, "plugins") or []) and get(cfg, key) is not False else None
    return engaged


def _loss_type(accepted: tuple[str, ...], refused: bool) -> Callable[[Any], Any]:
    def engaged(cfg: Any) -> Any:
        lt = get(cfg, "loss_type")
        if lt in (None, "nll"):
            return None
        return lt if (lt not in accepted) == refused else None
    return engaged


def _liger_trl_flce(cfg: Any) -> Any:
    """TRL `use_liger_kernel`: Liger's fused linear cross-entropy is on unless `liger_kernel_config` turns it off."""
    if not get(cfg, "use_liger_kernel"):
        return None
    conf = get(cfg, "liger_kernel_config") or {}
    return None if conf.get("fused_linear_cross_entropy", True) is False else True


def liger_cross_entropy_installed() -> bool:
    """True when `torch.nn.functional.cross_entropy` is Liger's (its patch for most model types replaces it
    process-wide, and SSFT's chunked head calls it at call time)."""
    import torch.nn.functional as F

    return getattr(F.cross_entropy, "__module__", "").startswith("liger_kernel")


def _resolve_liger_ce() -> tuple[str, str]:
    if liger_cross_entropy_installed():
        return KEPT, LIGER_CE_USED
    return NOT_APPLIED, ("this model type's Liger patch replaces the model's own loss class, which SSFT never calls "
                         "(SSFT computes cross-entropy in its chunked output head with torch's kernel)")


LIGER_CE_USED = ("Liger's patch replaces torch.nn.functional.cross_entropy process-wide, so SSFT's chunked output "
                 "head computes each chunk's cross-entropy with Liger's kernel (matching pass and set loss)")
FUSED_NOT_USED = ("its fused loss runs only when the model's forward gets `labels`; SSFT never passes labels: the "
                  "patched forward calls the output module, which SSFT intercepts and projects in chunks of "
                  "`ssft_logits_chunk_tokens` positions (no [rows, length, vocabulary] logits, PEFT's forking-token "
                  "rows kept; the fused kernel reads `lm_head.weight` directly and would skip them)")
MODULE_KERNEL = "a module kernel: runs in every SSFT forward (matching pass and set loss) as in SFT"
LORA_KERNEL = ("fused LoRA autograd functions of the attention / MLP projections; the forking-token rows live on "
               "embed_tokens / lm_head (PEFT trainable tokens), which the patch leaves alone, and the kernels' "
               "backward returns the input gradient that reaches them")
OFFLOAD = ("TRL's offloader wraps the whole training step, so the matching pass (no grad: nothing saved) and every "
           "set-loss slice run under it (read from the code; it needs an accelerator, so not run on CPU)")
CPU_TEST = "tests/unit/test_recipe_options.py"
KERNEL_TEST = "tests/unit/test_recipe_kernels.py"
E2E_TEST = "tests/e2e/test_recipes.py"
GPU = "scripts/gpu_check.sh (not run: no GPU lent)"

# ---------------------------------------------------------------------------------------------- the table
OPTIONS: tuple[RecipeOption, ...] = (
    # packing: mapped to the padding-free set loss (`packed_rows.py`); the packing path prints its own start line
    RecipeOption("sample_packing", AXOLOTL, MAPPED, PACKED + "; Axolotl's multipack sampler is turned off",
                 "tests/e2e/test_axolotl_plugin.py::test_sample_packing_runs_padding_free_and_equals_the_padded_run"),
    RecipeOption("eval_sample_packing", AXOLOTL, MAPPED, "turned off; evaluation runs the training set loss "
                 "(padding-free when training is)", "tests/e2e/test_axolotl_plugin.py"),
    RecipeOption("batch_flattening", AXOLOTL, MAPPED, PACKED + " (also `auto` with flash attention and "
                 "micro_batch_size > 1, Axolotl's rule)", "tests/e2e/test_axolotl_plugin.py"),
    RecipeOption("packing", TRL, MAPPED, PACKED + "; TRL's packing collator is turned off (any packing_strategy)",
                 "tests/unit/test_packed_rows.py"),
    RecipeOption("padding_free", TRL, MAPPED, PACKED + "; TRL's flattening collator is turned off",
                 "tests/unit/test_packed_rows.py"),
    # refused: one question per row, or another trainer
    RecipeOption("group_by_length", AXOLOTL, REFUSED, "SSFT rows have no `input_ids` length (a row is a prompt plus "
                 "several traces)", "tests/e2e/test_axolotl_plugin.py::test_refused_options_explain_why",
                 "Remove `group_by_length`."),
    RecipeOption("train_sampling_strategy", TRL, REFUSED, "'group_by_length': SSFT rows have no `input_ids` length "
                 "(a row is a prompt plus several traces)", CPU_TEST, "Use 'random' or 'sequential'.",
                 engaged=lambda cfg: get(cfg, "train_sampling_strategy") if get(cfg, "train_sampling_strategy") ==
                 "group_by_length" else None),
    RecipeOption("streaming", AXOLOTL, REFUSED, "SSFT validates and tokenizes whole datasets (rows are checked "
                 "before training, with errors naming the row)", "tests/e2e/test_axolotl_plugin.py",
                 "Set `streaming: false` and use a map-style dataset."),
    RecipeOption("pretraining_dataset", AXOLOTL, REFUSED, "pretraining datasets are streamed and packed into "
                 "fixed-length chunks of raw text, which breaks one question per row", "tests/e2e/test_axolotl_plugin.py",
                 "Use `datasets:` with `type: ssft`."),
    RecipeOption("rl", AXOLOTL, REFUSED, "SSFT is supervised (NLL) training with its own trainer", CPU_TEST,
                 "Remove `rl:` (for GFPO, stage 2 on an SSFT model, set `rl: grpo` and `gfpo: true`)."),
    RecipeOption("reward_model", AXOLOTL, REFUSED, "SSFT trains a causal LM, not a reward model", CPU_TEST,
                 "Remove `reward_model`."),
    RecipeOption("process_reward_model", AXOLOTL, REFUSED, "SSFT trains a causal LM, not a process reward model",
                 CPU_TEST, "Remove `process_reward_model`."),
    RecipeOption("context_parallel_size", AXOLOTL, REFUSED, "context parallelism splits one sequence across GPUs, "
                 "but SSFT's matching pass scores N x M sequences per question on each GPU",
                 "tests/e2e/test_axolotl_plugin.py", "Use data parallelism (DDP, FSDP or DeepSpeed ZeRO) instead.",
                 engaged=_above_one("context_parallel_size")),
    RecipeOption("sequence_parallel_degree", AXOLOTL, REFUSED, "context parallelism splits one sequence across "
                 "GPUs, but SSFT's matching pass scores N x M sequences per question on each GPU", CPU_TEST,
                 "Use data parallelism (DDP, FSDP or DeepSpeed ZeRO) instead.",
                 engaged=_above_one("sequence_parallel_degree")),
    RecipeOption("liger_use_token_scaling", AXOLOTL, REFUSED, "it rescales each token's loss by its probability "
                 "inside Liger's fused loss (DFT), which SSFT's set loss (plain NLL) does not use", CPU_TEST,
                 "Remove `liger_use_token_scaling`."),
    RecipeOption("loss_type", TRL, REFUSED, "SSFT's set loss is plain NLL over the matched traces ('dft' and other "
                 "losses change the objective)", CPU_TEST, "Leave loss_type at 'nll' (or 'chunked_nll').",
                 engaged=_loss_type(("chunked_nll",), refused=True)),
    # mapped
    RecipeOption("loss_type", TRL, MAPPED, "'chunked_nll' -> SSFT's own chunked output head "
                 "(`ssft_logits_chunk_tokens` positions at a time, through the output module so PEFT's forking rows "
                 "train); TRL's chunked head reads the output weight directly", CPU_TEST,
                 engaged=_loss_type(("chunked_nll",), refused=False)),
    RecipeOption("sequence_len", AXOLOTL, MAPPED, "-> max_length of the SSFT rows (prompt + forking token + trace); "
                 "traces longer than that follow `ssft_long_traces` and `ssft_max_truncated_share`",
                 "tests/unit/test_long_traces.py"),
    # kept
    RecipeOption("max_length", TRL, KEPT, "the longest SSFT row (prompt + forking token + trace); traces longer "
                 "than that follow `ssft_long_traces` and `ssft_max_truncated_share`", "tests/unit/test_long_traces.py"),
    RecipeOption("chat_template", AXOLOTL, KEPT, "renders the prompts (the forking token follows the generation "
                 "prompt)", E2E_TEST),
    RecipeOption("special_tokens", AXOLOTL, KEPT, "added as usual; the plugin appends the forking tokens to "
                 "`additional_special_tokens`", E2E_TEST),
    RecipeOption("tokens", AXOLOTL, KEPT, "added as usual; with an adapter Axolotl requires `lora_modules_to_save: "
                 "[embed_tokens, lm_head]`, and then the forking rows train as part of those full matrices", E2E_TEST),
    RecipeOption("bf16", AXOLOTL, KEPT, "weights / autocast in bf16; costs, assignments and losses within bf16 "
                 "tolerance of fp32", "tests/unit/test_bf16.py"),
    RecipeOption("bf16", TRL, KEPT, "weights / autocast in bf16; costs, assignments and losses within bf16 "
                 "tolerance of fp32", "tests/unit/test_bf16.py"),
    RecipeOption("attn_implementation", AXOLOTL, KEPT, "every SSFT forward uses the model's attention (the matching "
                 "pass shares each prompt through the key/value cache)", f"sdpa/eager: {E2E_TEST}; flash_attention_2: {GPU}"),
    RecipeOption("flash_attention", AXOLOTL, KEPT, "every SSFT forward uses the model's attention (the matching pass "
                 "shares each prompt through the key/value cache)", GPU),
    RecipeOption("gradient_checkpointing", AXOLOTL, KEPT, "the set loss's forward is checkpointed as in SFT; "
                 "Axolotl turns `offload` into `activation_offloading` (next rows)",
                 f"true: tests/e2e/test_axolotl_plugin.py; offload: {E2E_TEST} (normalised config)"),
    RecipeOption("gradient_checkpointing", TRL, KEPT, "the set loss's forward is checkpointed as in SFT",
                 "tests/unit/test_training.py"),
    RecipeOption("activation_offloading", AXOLOTL, KEPT, OFFLOAD, GPU),
    RecipeOption("activation_offloading", TRL, KEPT, OFFLOAD, GPU),
    RecipeOption("lora_qkv_kernel", AXOLOTL, KEPT, LORA_KERNEL, f"{KERNEL_TEST} and {E2E_TEST} (plain torch: runs on "
                 f"CPU); {GPU}"),
    RecipeOption("lora_o_kernel", AXOLOTL, KEPT, LORA_KERNEL, f"{KERNEL_TEST} and {E2E_TEST} (plain torch: runs on "
                 f"CPU); {GPU}"),
    RecipeOption("lora_mlp_kernel", AXOLOTL, KEPT, LORA_KERNEL + " (Triton: read from the code, not run here)", GPU),
    RecipeOption("lora_embedding_kernel", AXOLOTL, KEPT, "patches only an embedding that carries a LoRA adapter; the "
                 "forking rows' trainable-tokens wrapper is left as it is", KERNEL_TEST),
    RecipeOption("liger_rope", AXOLOTL, KEPT, MODULE_KERNEL, f"validation: {E2E_TEST}; kernels: {GPU}"),
    RecipeOption("liger_rms_norm", AXOLOTL, KEPT, MODULE_KERNEL, f"validation: {E2E_TEST}; kernels: {GPU}"),
    RecipeOption("liger_rms_norm_gated", AXOLOTL, KEPT, MODULE_KERNEL, f"validation: {E2E_TEST}; kernels: {GPU}"),
    RecipeOption("liger_glu_activation", AXOLOTL, KEPT, MODULE_KERNEL, f"validation: {E2E_TEST}; kernels: {GPU}"),
    RecipeOption("liger_layer_norm", AXOLOTL, KEPT, MODULE_KERNEL, f"validation: {E2E_TEST}; kernels: {GPU}"),
    RecipeOption("liger_cross_entropy", AXOLOTL, KEPT, LIGER_CE_USED, f"{KERNEL_TEST} (call path); kernel: {GPU}",
                 resolve=_resolve_liger_ce),
    RecipeOption("use_liger_kernel", TRL, KEPT, "Liger's module kernels (RoPE, RMSNorm, SwiGLU) run in every SSFT "
                 "forward (the Trainer patches the model instance when training starts); for its fused loss see the "
                 "last rows", f"{KERNEL_TEST} (the same instance patch, FLCE only); kernels: {GPU}"),
    RecipeOption("fsdp_config", AXOLOTL, KEPT, "FSDP / FSDP2: same forward calls on every rank, the chunked head's "
                 "recompute after the re-gather (README, 'many processes')", "tests/e2e/test_fsdp.py (fully_shard, 2 "
                 "CPU processes); accelerate's FSDP needs GPUs: validation in " + E2E_TEST),
    RecipeOption("fsdp", TRL, KEPT, "FSDP / FSDP2: same forward calls on every rank, the chunked head's recompute "
                 "after the re-gather", "tests/e2e/test_fsdp.py (fully_shard, 2 CPU processes)"),
    RecipeOption("deepspeed", AXOLOTL, KEPT, "ZeRO 1-3: the set loss runs as one slice (the engine owns the backward); "
                 "ZeRO-3 with an adapter: see PEFT's trainable-token issues in docs/recipes.md",
                 f"validation: {E2E_TEST} (deepspeed is not installed here)"),
    RecipeOption("deepspeed", TRL, KEPT, "ZeRO 1-3: the set loss runs as one slice (the engine owns the backward)",
                 "not run here (deepspeed is not installed)"),
    # not applied: accepted, the run says why at start
    RecipeOption("cut_cross_entropy", AXOLOTL, NOT_APPLIED, "Cut Cross Entropy: " + FUSED_NOT_USED,
                 f"{KERNEL_TEST} (the same forward shape, Liger's); CCE itself: {GPU}",
                 engaged=_plugin_on(CCE_PLUGIN, "cut_cross_entropy")),
    RecipeOption("liger_fused_linear_cross_entropy", AXOLOTL, NOT_APPLIED, FUSED_NOT_USED,
                 f"{KERNEL_TEST} (patched forward without labels, CPU)"),
    RecipeOption("liger_kernel_config.fused_linear_cross_entropy", TRL, NOT_APPLIED, "use_liger_kernel's fused linear "
                 "cross-entropy: " + FUSED_NOT_USED, KERNEL_TEST, engaged=_liger_trl_flce),
    RecipeOption("chunked_cross_entropy", AXOLOTL, NOT_APPLIED, "it patches the loss the model computes from "
                 "`labels`, which SSFT never passes; SSFT's own head already works in chunks "
                 "(`ssft_logits_chunk_tokens`)", CPU_TEST),
    RecipeOption("pad_to_sequence_len", AXOLOTL, NOT_APPLIED, "SSFT builds its own rows per micro-batch, padded to "
                 "the longest matched row or packed (padding-free)", "tests/e2e/test_axolotl_plugin.py"),
    RecipeOption("train_on_inputs", AXOLOTL, NOT_APPLIED, "SSFT's loss is always on the traces (and the forking token "
                 "with `ssft_fork_token_loss`), never on the prompt", CPU_TEST),
    RecipeOption("completion_only_loss", TRL, NOT_APPLIED, "SSFT's loss is always on the traces (and the forking "
                 "token with `ssft_fork_token_loss`)", CPU_TEST),
    RecipeOption("assistant_only_loss", TRL, NOT_APPLIED, "SSFT's loss is always on the traces (and the forking "
                 "token with `ssft_fork_token_loss`)", CPU_TEST),
)


def options_for(front: str) -> tuple[RecipeOption, ...]:
    return tuple(o for o in OPTIONS if o.front == front)


def engaged_options(cfg: Any, front: str) -> list[tuple[RecipeOption, Any]]:
    """The rows of `front` that this recipe turns on, with the value it gives each."""
    out = []
    for opt in options_for(front):
        v = opt.value(cfg)
        if v is not None:
            out.append((opt, v))
    return out


def check_recipe(cfg: Any, front: str) -> None:
    """Raise `ValueError` naming the first refused option this recipe sets, why, and the fix."""
    for opt, v in engaged_options(cfg, front):
        if opt.status == REFUSED:
            raise ValueError(f"SSFT cannot run with `{opt.key}: {v!r}`: {opt.what}. {opt.fix}")


def _status(opt: RecipeOption) -> tuple[str, str]:
    return opt.resolve() if opt.resolve is not None else (opt.status, opt.what)


def _shown(opt: RecipeOption, v: Any) -> str:
    if v is True or isinstance(v, (dict, list, tuple)):
        return opt.key
    return f"{opt.key}={getattr(v, 'value', v)}"  # enums (Axolotl's chat templates) by their value


def recipe_lines(cfg: Any, front: str) -> list[str]:
    """The start-of-run report: one line listing what is kept and mapped, one line per option that does not apply.

    Refused options never get here (`check_recipe` stopped the run); the packing rows are reported by the packing
    path itself.
    """
    kept, mapped, lines = [], [], []
    for opt, v in engaged_options(cfg, front):
        status, what = _status(opt)
        if status == KEPT:
            kept.append(_shown(opt, v))
        elif status == MAPPED and opt.key not in PACKING_KEYS:
            mapped.append(f"{_shown(opt, v)} ({what.split(';')[0]})")
        elif status == NOT_APPLIED:
            lines.append(f"SSFT: `{opt.key}: {v}` does not apply to SSFT: {what}.")
    head = []
    if kept or mapped:
        parts = ([f"kept: {', '.join(kept)}"] if kept else []) + ([f"mapped: {'; '.join(mapped)}"] if mapped else [])
        head.append(f"SSFT recipe options ({front}): " + "; ".join(parts) + " (docs/recipes.md)")
    return head + lines


def docs_table(front: str) -> str:
    """The markdown table of `front`'s rows, as `docs/recipes.md` shows it."""
    rows = ["| option | SSFT | what it does for SSFT | checked by |", "|---|---|---|---|"]
    for o in options_for(front):
        what = o.what + (f" Fix: {o.fix}" if o.fix else "")
        rows.append(f"| `{o.key}` | {o.status} | {what} | {o.checked} |")
    return "\n".join(rows)
