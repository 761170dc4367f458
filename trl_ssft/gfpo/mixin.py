"""`GFPOMixin`: Global Forking Policy Optimization on top of TRL's `GRPOTrainer` (trl 1.9 through 1.16).

Three overrides, everything else is TRL's own GRPO:

1. `_tokenize_prompts`: after TRL tokenizes the prompts, one no-grad forward gives p(forking token | prompt +
   the layout's text before the token); each rollout gets one forking token (`sample`: drawn from the N-way
   distribution; `enumerate`: rollout k of a group gets token k mod N), appended to its prompt with the model's
   forking-token layout around it (`layout.fork_span`, the layout of ssft_state.json unless `gfpo_fork_layout`
   says otherwise), so the rollout is generated after it. `free` appends only the layout's text before the
   token: the model generates its own forking token.
2. `_generate`: the forking token moves out of the prompt into a ONE-token completion (the prompt keeps the
   layout's text before it); the layout's text after it and the generated continuation leave the completion
   (they get no gradient) and go to the reward functions as text (`completions`: the generated text) and as ids
   (`gfpo_continuation_ids`: the layout's text after the token, then the generated ids), with
   `gfpo_fork_token` / `gfpo_fork_index`.
3. `_calculate_rewards`: `free` rollouts that did not start with a forking token get no reward (NaN, which
   TRL turns into advantage 0), and per-token metrics are logged.

TRL then computes group-normalised advantages, old/reference log-probabilities, clipping, KL and its loss
with its own GA scaling over that single completion token: the policy gradient is sum_k A_k grad log pi(g_k|x),
taken at the forking-token position only. With full-vocabulary log-probabilities this equals the N-way one
whenever a group's advantages sum to zero (they do after TRL's group normalisation): the two differ by
grad log sum_{i<=N} pi(g_i|x), weighted by sum_k A_k = 0.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..eval.inference import _left_pad, find_fork_tokens
from ..layout import fork_span, model_layout
from ..state import read_ssft_state, resume_dir
from ..tokens import forbidding_logit_bias, fork_token_ids, pad_token_id
from .anchor import anchor_reference, continuation_tensors, drop_saved_reference, k3_kl, repair_trl_ref_adapter
from .exploration import check_enumerate_group, peaked_message
from .fields import GFPOFields
from .params import apply_trainable, expose_output_bias
from .state import GFPOStateMixin

logger = logging.getLogger(__name__)

SUPPORTED_LOSS_TYPES = ("grpo", "bnpo", "dapo", "cispo", "sapo")


def check_grpo_args(args, settings: GFPOFields) -> None:
    """Refuse GRPO settings that cannot work with one trained token per rollout (before TRL builds anything)."""
    per_rollout = settings.gfpo_token_choice != "free"
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", "colocate") == "server" and per_rollout:
        raise ValueError(
            f"gfpo_token_choice={settings.gfpo_token_choice!r} gives every rollout its own forking token, but vLLM server "
            "mode generates only one prompt per group (every num_generations-th): use vllm_mode='colocate', "
            "transformers generation (use_vllm=False), or gfpo_token_choice='free'")
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_importance_sampling_correction", False):
        raise ValueError("GFPO needs vllm_importance_sampling_correction=False: the trained forking token is chosen by "
                         "the training model, and the rollouts' vLLM log-probabilities are not used")
    if getattr(args, "mask_truncated_completions", False):
        raise ValueError("GFPO needs mask_truncated_completions=False: every GFPO completion is the single forking "
                         "token (no EOS), so TRL would mask all of them; a truncated rollout is scored by its reward")
    if getattr(args, "use_liger_kernel", False):
        raise ValueError("GFPO does not support use_liger_kernel (its fused GRPO loss bypasses the trainer's loss)")
    loss_type = getattr(args, "loss_type", "dapo")
    if loss_type not in SUPPORTED_LOSS_TYPES:
        raise ValueError(f"GFPO supports loss_type in {SUPPORTED_LOSS_TYPES}, got {loss_type!r} (dr_grpo divides by "
                         "max_completion_length, luspo scales by completion length, vespo needs vLLM IS weights)")
    if getattr(args, "top_entropy_quantile", 1.0) < 1.0:
        raise ValueError("GFPO needs top_entropy_quantile=1.0: with one token per rollout it would drop whole rollouts")
    if settings.gfpo_trainable == "fork_rows" and getattr(args, "weight_decay", 0.0):
        raise ValueError("gfpo_trainable='fork_rows' needs weight_decay=0")


def suppress_in_rollouts(trainer, ids: list[int]) -> None:
    """Forbid token `ids` in every token a GRPO trainer generates (its rollouts' continuations).

    transformers generation: added to the trainer's `generation_config.suppress_tokens` (and the
    `generation_kwargs` TRL lays over the model's own generation config); vLLM (colocate): a -100 logit bias,
    the most vLLM's `SamplingParams` allows, merged into the generation kwargs TRL passes to it.
    """
    vllm = getattr(trainer, "vllm_generation", None)
    if getattr(trainer.args, "use_vllm", False) and vllm is not None:
        bias = dict(vllm.generation_kwargs.get("logit_bias") or {})
        bias.update(forbidding_logit_bias(ids))
        vllm.generation_kwargs = {**vllm.generation_kwargs, "logit_bias": bias}
        return
    config = getattr(trainer, "generation_config", None)
    if config is None:
        raise ValueError("gfpo_suppress_fork_tokens: this GRPO trainer has neither a vLLM generator nor a "
                         "generation_config to suppress the forking tokens in; set gfpo_suppress_fork_tokens false")
    merged = sorted(set(config.suppress_tokens or []) | {int(t) for t in ids})
    config.suppress_tokens = merged
    if isinstance(getattr(trainer, "generation_kwargs", None), dict):
        trainer.generation_kwargs["suppress_tokens"] = merged


def resolve_fork_tokens(tokenizer, settings: GFPOFields, fork_tokens=None, model_path=None) -> tuple[list, list]:
    """Names and ids of the forking tokens: `fork_tokens`, `gfpo_fork_tokens`, the model's ssft_state.json, or the
    tokenizer's `<think1>`, `<think2>`, ... (`gfpo_fork_token_template`)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    names = list(fork_tokens or settings.gfpo_fork_tokens or [])
    if not names and isinstance(model_path, str):
        names = list(read_ssft_state(model_path).get("fork_tokens") or [])
    if not names:
        names = find_fork_tokens(tok, settings.gfpo_fork_token_template)
    if not names:
        raise ValueError("GFPO found no forking tokens: no gfpo_fork_tokens, no ssft_state.json next to the model, and "
                         f"no {settings.gfpo_fork_token_template.format(i=1)!r} in the tokenizer. Start from an SSFT model")
    return names, fork_token_ids(tok, names)


def model_path_of(model) -> str | None:
    if isinstance(model, str):
        return model
    for m in (model, getattr(model, "base_model", None)):
        p = getattr(m, "name_or_path", None) or getattr(getattr(m, "config", None), "_name_or_path", None)
        if isinstance(p, str) and p:
            return p
    return None


class GFPOMixin(GFPOStateMixin):
    """The GFPO overrides of a `GRPOTrainer` (TRL's or Axolotl's). Inactive until `gfpo_setup` is called."""

    gfpo_args: GFPOFields | None = None
    _gfpo_ref = None

    # ------------------------------------------------------------ setup
    def gfpo_setup(self, settings: GFPOFields, fork_tokens=None, model_path=None) -> None:
        """Activate GFPO: resolve the forking tokens, refuse what cannot work, choose the trainable parameters."""
        check_grpo_args(self.args, settings)
        for attr, what in (("tools", "tools"), ("rollout_func", "rollout_func"),
                           ("environment_factories", "environment_factory")):
            if getattr(self, attr, None):
                raise ValueError(f"GFPO does not support {what}: a rollout is one forking token plus one generation")
        expose_output_bias(self.model)  # trl >= 1.15's fused LM head through PEFT's trainable forking rows
        repair_trl_ref_adapter(self.accelerator.unwrap_model(self.model))
        tokenizer = getattr(self, "_tokenizer", None) or self.processing_class
        names, ids = resolve_fork_tokens(tokenizer, settings, fork_tokens, model_path)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if max(ids) >= vocab:
            raise ValueError(f"forking token ids {ids} exceed the model's output size {vocab}")
        notice = check_enumerate_group(settings.gfpo_token_choice, self.num_generations, names)
        if notice:
            logger.warning(notice)
        self.gfpo_args, self.gfpo_fork_names, self.gfpo_fork_ids = settings, names, ids
        self.gfpo_layout = model_layout(tokenizer, settings.gfpo_fork_layout,  # the layout the model was trained with
                                        read_ssft_state(model_path) if isinstance(model_path, str) else {}, names[0])
        self._gfpo_pos = {t: k for k, t in enumerate(ids)}
        self._gfpo_source = model_path
        self._gfpo_gen = torch.Generator().manual_seed(int(self.args.seed) + 7919 * self.accelerator.process_index)
        self._gfpo_pending = None
        self.gfpo_counts = np.zeros(len(ids), dtype=np.int64)
        self.gfpo_reward_sums = np.zeros(len(ids), dtype=np.float64)
        self.gfpo_no_fork = 0
        self.gfpo_num_trainable = apply_trainable(self.model, settings.gfpo_trainable, ids,
                                                  getattr(self.args, "weight_decay", 0.0))
        self._gfpo_ref = anchor_reference(self) if settings.gfpo_anchor_coef > 0 else None
        self._gfpo_continuations = None
        self._gfpo_peak_checked = settings.gfpo_token_choice != "sample"
        if self.accelerator.is_main_process:
            print(self.gfpo_start_line(), flush=True)
        self.gfpo_suppressing = settings.gfpo_suppress_fork_tokens and settings.gfpo_token_choice != "free"
        if self.gfpo_suppressing:
            suppress_in_rollouts(self, ids)

    def gfpo_start_line(self) -> str:
        """What this run does, printed at the start: token choice, trainable set, anchor and its reference."""
        a = self.gfpo_args
        anchor = (f"anchor {a.gfpo_anchor_coef:g} against {self._gfpo_ref.describe()}" if self._gfpo_ref is not None
                  else "no anchor")
        return (f"GFPO: {len(self.gfpo_fork_ids)} forking tokens, gfpo_token_choice={a.gfpo_token_choice}, "
                f"num_generations={self.num_generations}, gfpo_trainable={a.gfpo_trainable} "
                f"({self.gfpo_num_trainable:,} trainable elements), {anchor}")

    def _gfpo_mode(self) -> str:
        return "train" if self.model.training else "eval"

    # ------------------------------------------------------------ 1. choose the tokens
    @torch.no_grad()
    def gfpo_fork_logprobs(self, prompt_ids: list[list[int]]) -> torch.Tensor:
        """Full-vocabulary log p(forking token i | prompt) for each prompt: [len(prompt_ids), N] float on CPU.

        One forward over the distinct prompts, left-padded and called as TRL's loss calls the model
        (input ids and attention mask), keeping only the last position's logits.
        """
        tokenizer = getattr(self, "_tokenizer", None) or self.processing_class
        before = list(self.gfpo_layout.before)  # the layout's text before the token is part of the context
        uniq: dict[tuple, int] = {}
        index = [uniq.setdefault(tuple(p) + tuple(before), len(uniq)) for p in prompt_ids]
        ids, mask = _left_pad(list(uniq), pad_token_id(tokenizer))
        device = self.accelerator.device
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                            logits_to_keep=1).logits[:, -1, :].float()
        logp = torch.log_softmax(logits, dim=-1)[:, self.gfpo_fork_ids]
        return logp[torch.tensor(index, device=logp.device)].cpu()

    def _gfpo_choose(self, logp: torch.Tensor) -> torch.Tensor | None:
        mode, n = self.gfpo_args.gfpo_token_choice, len(self.gfpo_fork_ids)
        if mode == "free":
            return None
        if mode == "enumerate":
            g = self.num_generations if self._gfpo_mode() == "train" else (
                getattr(self, "num_generations_eval", None) or self.num_generations)
            start = self.accelerator.process_index * logp.shape[0]
            return torch.tensor([((start + i) % g) % n for i in range(logp.shape[0])])
        probs = torch.softmax(logp / self.gfpo_args.gfpo_token_temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self._gfpo_gen)[:, 0]

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.gfpo_args is None:
            return prompt_ids, images, multimodal_fields
        prompt_ids = [[int(t) for t in p] for p in prompt_ids]
        logp = self.gfpo_fork_logprobs(prompt_ids)
        choice = self._gfpo_choose(logp)
        self._gfpo_pending = {"logp": logp, "choice": choice}
        if choice is not None:  # the chosen token with the layout's text around it
            prompt_ids = [p + fork_span(self.gfpo_fork_ids[c], self.gfpo_layout)[0]
                          for p, c in zip(prompt_ids, choice.tolist(), strict=True)]
        else:  # free: the model writes its own token after the layout's text before it
            prompt_ids = [p + list(self.gfpo_layout.before) for p in prompt_ids]
        return prompt_ids, images, multimodal_fields

    # ------------------------------------------------------------ 2. one-token completions
    def _gfpo_split(self, prompt_ids, completion_ids, per_rollout: bool):
        """(prompts without the token, one-token completions, continuations, token index or None) per rollout."""
        tokenizer = getattr(self, "_tokenizer", None) or self.processing_class
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_token_id(tokenizer)
        prompts, completions, continuations, index = [], [], [], []
        after = len(self.gfpo_layout.after)
        for p, c in zip(prompt_ids, completion_ids, strict=True):
            p, c = [int(t) for t in p], [int(t) for t in c]
            if per_rollout:  # p = prompt + before + [token] + after
                cut = len(p) - after - 1
                prompts.append(p[:cut])
                completions.append([p[cut]])
                continuations.append(p[cut + 1:] + c)
                index.append(self._gfpo_pos[p[cut]])
            else:
                first = c[0] if c else eos
                prompts.append(p)
                completions.append([first])
                continuations.append(c[1:])
                index.append(self._gfpo_pos.get(first))
        return prompts, completions, continuations, index

    def _gfpo_decode(self, continuations, prompts):
        texts = self.processing_class.batch_decode(continuations, skip_special_tokens=True)
        if prompts and isinstance(prompts[0], list):
            return [[{"role": "assistant", "content": t}] for t in texts]
        return texts

    def _generate(self, prompts: list):
        out = super()._generate(prompts)
        if self.gfpo_args is None:
            return out
        prompt_ids, completion_ids, _tool_mask, completions, _logprobs, extra, images, tool_images = out
        pending, self._gfpo_pending = self._gfpo_pending, None
        if pending is None:
            raise RuntimeError("GFPO: _generate ran without _tokenize_prompts (a rollout_func or an unsupported TRL path)")
        per_rollout = pending["choice"] is not None
        prompt_ids, completion_ids, continuations, index = self._gfpo_split(prompt_ids, completion_ids, per_rollout)
        if not per_rollout:
            completions = self._gfpo_decode(continuations, prompts)
        extra = dict(extra or {})
        extra["gfpo_fork_index"] = index
        extra["gfpo_fork_token"] = [self.gfpo_fork_names[k] if k is not None else None for k in index]
        extra["gfpo_continuation_ids"] = continuations
        self._gfpo_continuations = continuations
        self._gfpo_log_distribution(pending["logp"], index)
        if not self._gfpo_peak_checked and self._gfpo_mode() == "train":  # once, on the first training batch
            self._gfpo_peak_checked = True
            message = peaked_message(pending["logp"], self.gfpo_fork_names, self.gfpo_args.gfpo_token_temperature)
            if message and self.accelerator.is_main_process:
                logger.warning(message)
        # the one trained token was chosen by the training model: no sampling log-probs, no tool mask
        return prompt_ids, completion_ids, None, completions, None, extra, images, tool_images

    # ------------------------------------------------------------ 3. rewards and metrics
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.gfpo_args is None:
            return rewards_per_func
        local = [x.get("gfpo_fork_index") for x in inputs]
        idx = self.accelerator.gather(torch.tensor([-1 if k is None else k for k in local],
                                                   device=rewards_per_func.device))
        rewards_per_func[idx < 0] = torch.nan  # free mode: no forking token, no reward
        self._gfpo_log_rewards(rewards_per_func, idx)
        return rewards_per_func

    def _gfpo_metric(self, name: str, value: float) -> None:
        self._metrics[self._gfpo_mode()][name].append(float(value))

    def _gfpo_log_distribution(self, logp: torch.Tensor, index: list) -> None:
        device = self.accelerator.device
        idx = torch.tensor([-1 if k is None else k for k in index], device=device)
        logp = self.accelerator.gather(logp.to(device))
        idx = self.accelerator.gather(idx)
        probs = torch.softmax(logp, dim=-1)
        chosen = idx >= 0
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
        self._gfpo_metric("gfpo/fork_mass", torch.logsumexp(logp, dim=-1).exp().mean().item())
        self._gfpo_metric("gfpo/entropy", entropy.mean().item())
        if chosen.any():
            p_chosen = probs[chosen].gather(1, idx[chosen].unsqueeze(1))[:, 0]
            self._gfpo_metric("gfpo/chosen_prob", p_chosen.mean().item())
        self._gfpo_metric("gfpo/no_fork_frac", (~chosen).float().mean().item())
        for k, name in enumerate(self.gfpo_fork_names):
            self._gfpo_metric(f"gfpo/prob/{name}", probs[:, k].mean().item())
            self._gfpo_metric(f"gfpo/usage/{name}", (idx == k).float().mean().item())

    def _gfpo_log_rewards(self, rewards_per_func: torch.Tensor, idx: torch.Tensor) -> None:
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        train = self._gfpo_mode() == "train"
        for k, name in enumerate(self.gfpo_fork_names):
            sel = idx == k
            if sel.any():
                self._gfpo_metric(f"gfpo/reward/{name}", rewards[sel].mean().item())
            if train:
                self.gfpo_counts[k] += int(sel.sum().item())
                self.gfpo_reward_sums[k] += float(rewards[sel].sum().item())
        if train:
            self.gfpo_no_fork += int((idx < 0).sum().item())

    # ------------------------------------------------------------ optional fork-mass term
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        coef = self.gfpo_args.gfpo_fork_mass_coef if self.gfpo_args is not None else 0.0
        if coef > 0:
            loss = loss + coef * self._gfpo_mass_loss(model, inputs)
        if self._gfpo_ref is not None:  # set by gfpo_setup only when gfpo_anchor_coef > 0
            loss = loss + self.gfpo_args.gfpo_anchor_coef * self._gfpo_anchor_loss(model, inputs)
        return loss

    # ------------------------------------------------------------ optional continuation anchor
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.gfpo_args is None or self._gfpo_ref is None:
            return output
        conts, self._gfpo_continuations = self._gfpo_continuations, None
        if conts is None or len(conts) != output["prompt_ids"].shape[0]:
            raise RuntimeError("GFPO anchor: the continuations of this generation batch are missing")
        tokenizer = getattr(self, "_tokenizer", None) or self.processing_class
        output["gfpo_cont_ids"], output["gfpo_cont_mask"] = continuation_tensors(
            conts, pad_token_id(tokenizer), output["prompt_ids"].device)
        with torch.no_grad(), self._gfpo_ref.scoring(self) as reference:
            output["gfpo_ref_cont_logps"] = self._gfpo_cont_logps(reference, output)
        return output

    def _gfpo_cont_logps(self, model, inputs) -> torch.Tensor:
        """log p(continuation token | prompt, forking token, earlier tokens) under `model`: [B, L_cont], at TRL's
        sampling temperature (as TRL scores completions); padding positions are meaningless (use the mask)."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"], inputs["gfpo_cont_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], torch.ones_like(inputs["completion_ids"]), inputs["gfpo_cont_mask"]],
                         dim=1)
        width = inputs["gfpo_cont_ids"].shape[1]
        return self._get_per_token_logps_and_entropies(model, ids, mask, width,
                                                       batch_size=self.args.per_device_train_batch_size)[0]

    def _gfpo_anchor_loss(self, model, inputs) -> torch.Tensor:
        """k3 estimate of KL(policy || reference) per continuation token (TRL's KL form), mean over the
        micro-batch's continuation tokens, scaled for GA as TRL scales its loss."""
        loss = k3_kl(self._gfpo_cont_logps(model, inputs), inputs["gfpo_ref_cont_logps"], inputs["gfpo_cont_mask"])
        self._gfpo_metric("gfpo/anchor_kl", loss.item())
        if self._gfpo_mode() == "train":
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def _gfpo_mass_loss(self, model, inputs) -> torch.Tensor:
        """-log sum_i p(forking token i | prompt), mean over the micro-batch, scaled for GA as TRL scales its loss."""
        logits = model(input_ids=inputs["prompt_ids"], attention_mask=inputs["prompt_mask"], use_cache=False,
                       logits_to_keep=1).logits[:, -1, :].float()
        logp = torch.log_softmax(logits, dim=-1)[:, self.gfpo_fork_ids]
        loss = -torch.logsumexp(logp, dim=-1).mean()
        self._gfpo_metric("gfpo/fork_mass_loss", loss.item())
        if self._gfpo_mode() == "train":
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_dir(resume_from_checkpoint, self.args.output_dir) if self.gfpo_args is not None else None
        if path:
            self.gfpo_load_state(path)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.gfpo_args is not None and self.args.should_save:
            if self._gfpo_ref is not None and self._gfpo_ref.kind == "adapter_copy":
                drop_saved_reference(output_dir or self.args.output_dir)
            self.write_gfpo_state(output_dir or self.args.output_dir)
