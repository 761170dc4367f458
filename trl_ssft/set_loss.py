"""`SSFTLossMixin`: the set loss, shared by the TRL trainer and the Axolotl trainer.

Per micro-batch of B questions (see `collator.py` for the batch layout):

1. scoring (no grad, `self.model`): for every question the N x M rows ``[prompt, fork_i, trace_j[:T]]``
   -> cost [N, M] (`scoring.cost_matrices`; only for modes that need it);
2. matching: cost -> token per trace (`matching.match_question`);
3. set loss (grad, `model`): the sum_b M_b matched rows ``[prompt, fork_sigma(j), trace_j]`` with labels
   on the trace (and its end token), and on the forking token when `ssft_fork_token_loss`, run in
   token-budgeted slices with the logits built in chunks (`rows.sliced_set_loss`), padded or, with
   `ssft_padding_free`, packed (`packed_rows.py`; decided once in `setup_ssft`). The loss is
   sum of token NLL / number of loss tokens, where the count spans the whole gradient-accumulation
   window (and all processes when `average_tokens_across_devices`), as in SFT: GA=k gives the loss and
   gradients of a k-times larger batch.

The host trainer calls `setup_ssft` after `Trainer.__init__`. Match counts and their state file come
from `state.SSFTStateMixin`, logging from `match_metrics.MatchMetricsMixin`.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections import defaultdict

import numpy as np
import torch

from .checks import check_max_traces, more_traces_than_tokens
from .compat import disable_bnb_cpu_inference_repack
from .distributed import all_reduce_sum, check_parallelism
from .layout import BARE_IDS, LayoutIds, check_template_boundary, tokenize_layout
from .match_metrics import MatchMetricsMixin
from .matching import get_mode, match_question
from .output_head import OutputHead
from .packed_rows import first_batch_line, packed_attention, packing_line
from .rows import auto_slice_tokens, build_rows, loss_tokens, sliced_set_loss
from .scoring import ScoringOptions, cost_matrices
from .state import SSFTStateMixin, resume_dir


def question_key(prompt: list[int]) -> int:
    """A stable id of a question (its prompt ids): seeds its per-step random draws."""
    return zlib.crc32(np.asarray(prompt, dtype=np.int64).tobytes())


class SSFTLossMixin(MatchMetricsMixin, SSFTStateMixin):
    """Mix in before a `transformers.Trainer` subclass (`SFTTrainer`, `AxolotlTrainer`)."""

    ssft_args = None
    fork_token_ids: list[int] = []
    fork_token_names: list[str] = []
    ssft_pad_token_id: int = 0
    ssft_layout: LayoutIds = BARE_IDS
    ssft_packing: str | None = None  # a key of packed_rows.PACKED_ATTENTION: the set loss runs padding-free
    ssft_loss_counts: dict[str, int] | None = None

    def setup_ssft(self, ssft_args, fork_token_ids: list[int], fork_token_names: list[str], pad_token_id: int,
                   layout: LayoutIds | None = None, packing_request: str = "", packing_notes: tuple[str, ...] = ()):
        """Attach the SSFT settings (an object with the `ssft_*` fields); call after `Trainer.__init__`.

        `layout`: the tokenized forking-token layout; None tokenizes ``ssft_fork_layout`` with the trainer's
        tokenizer (and refuses a layout whose text merges with the chat template's generation prompt).

        The set loss's row layout is decided here: packed (`packed_rows.packed_attention`, which raises when the
        model's attention cannot keep packed rows apart exactly) when ``ssft_padding_free`` (resolved by the
        front end with `packed_rows.resolve_padding_free`), else padded. With `packing_request` (the recipe
        options that asked for packing) or `packing_notes` (what the front end's related options mean under
        SSFT) one line saying what packing does is printed.
        """
        self.ssft_args = ssft_args
        if layout is None:
            tok = getattr(self, "processing_class", None)
            tok = getattr(tok, "tokenizer", tok)
            layout = tokenize_layout(tok, getattr(ssft_args, "ssft_fork_layout", None)) if tok is not None else BARE_IDS
            if tok is not None and fork_token_names and ssft_args.ssft_assignment != "none":
                check_template_boundary(tok, layout, fork_token_names[0])
        self.ssft_layout = layout
        self.fork_token_ids = list(fork_token_ids)
        self.fork_token_names = list(fork_token_names)
        self.ssft_pad_token_id = pad_token_id
        self.ssft_mode = get_mode(ssft_args.ssft_assignment)
        self.ssft_scoring_options = ScoringOptions.from_fields(ssft_args)
        disable_bnb_cpu_inference_repack(self.model)
        self.ssft_packing = packed_attention(self.model) if getattr(ssft_args, "ssft_padding_free", None) else None
        self.ssft_loss_counts = {}  # set-loss counters: slices, tokens, fed (padding included)
        if (self.ssft_packing or packing_request or packing_notes) and self.args.process_index == 0:
            print(packing_line(self.ssft_packing, packing_request, packing_notes), flush=True)
        self.ssft_match_counts = np.zeros(len(fork_token_ids), dtype=np.int64)
        self._ssft_reset_metrics()
        # Our loss is already normalised by the token count of the whole GA window (see get_batch_samples).
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self.can_return_loss = True

    def _ssft_seed(self) -> int:
        seed = self.ssft_args.ssft_seed
        return int(self.args.seed if seed is None else seed)

    def _ssft_step(self) -> int:
        return int(self.state.global_step) if getattr(self, "state", None) is not None else 0

    # ---------------------------------------------------------------- GA normalisation
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and "ssft_num_loss_tokens" in batches[0]:
            count = 0
            for b in batches:
                if self._ssft_needs_selection(b):  # M > N somewhere: count the traces this step trains on
                    prompts, traces = self._unpack(b)
                    count += self._ssft_loss_tokens(self.ssft_select_traces(prompts, traces))
                else:
                    count += int(b["ssft_num_loss_tokens"].sum())
            num_items = torch.tensor(count, dtype=torch.long, device=device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                num_items = all_reduce_sum(num_items)
        return batches, num_items

    def _ssft_loss_tokens(self, traces) -> int:
        return loss_tokens(traces, self.ssft_args.ssft_fork_token_loss, self.ssft_mode.uses_tokens, self.ssft_layout)

    @staticmethod
    def _unpack(inputs) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Collated tensors -> prompts [B][P_b] and traces [B][M_b][L_bj] as id lists (padding removed)."""
        p_ids, p_len = inputs["ssft_prompt_ids"].tolist(), inputs["ssft_prompt_len"].tolist()
        t_ids, t_len = inputs["ssft_trace_ids"].tolist(), inputs["ssft_trace_len"].tolist()
        prompts = [p[:n] for p, n in zip(p_ids, p_len)]
        traces = [[t[:n] for t, n in zip(ts, ns) if n > 0] for ts, ns in zip(t_ids, t_len)]
        return prompts, traces

    # ---------------------------------------------------------------- M > N: traces of this step
    def _ssft_needs_selection(self, inputs) -> bool:
        if self.ssft_args is None:
            return False
        m = int((inputs["ssft_trace_len"] > 0).sum(-1).max())
        return bool(more_traces_than_tokens(m, len(self.fork_token_ids), self.ssft_args.ssft_assignment))

    def ssft_select_traces(self, prompts, traces) -> list:
        """The traces trained this step: all of them, or N drawn for a question with M > N (``subsample``).

        The draw depends only on the seed, the global step and the question, so it is the same on every
        process, in the GA token count and in the loss, and after a resume from a checkpoint.
        """
        n, args = len(self.fork_token_ids), self.ssft_args
        if not any([check_max_traces(len(ts), n, args.ssft_max_traces_policy, args.ssft_assignment)
                    for ts in traces]):
            return traces
        step, out = self._ssft_step(), []
        for p, ts in zip(prompts, traces):
            if len(ts) > n:
                rng = np.random.default_rng([self._ssft_seed(), step, question_key(p), 1])
                ts = [ts[j] for j in np.sort(rng.choice(len(ts), n, replace=False))]
            out.append(ts)
        return out

    # ---------------------------------------------------------------- steps 1 + 2: costs, assignments
    def ssft_cost_matrices(self, prompts, traces) -> list[np.ndarray]:
        """Cost [N, M_b] per question (`scoring.cost_matrices`), on `self.model` (unwrapped: no DDP hooks)."""
        costs, _ = cost_matrices(
            self.model, prompts, traces, self.fork_token_ids, match_tokens=self.ssft_args.ssft_match_tokens,
            max_tokens=self.ssft_args.ssft_match_max_tokens, pad_token_id=self.ssft_pad_token_id,
            device=self.args.device, options=self.ssft_scoring_options, layout=self.ssft_layout,
        )
        return costs

    def ssft_assignments(self, prompts, traces, mode: str | None = None) -> tuple[list, dict[str, list]]:
        """Token index per trace for each question (None without tokens), and the micro-batch's statistics.

        Statistics: lists keyed like `MatchStats`' fields (one entry per question for the counts) plus
        ``match_seconds``; empty for modes without a cost matrix.
        """
        mode = mode or self.ssft_args.ssft_assignment
        costs, stats = None, defaultdict(list)
        if get_mode(mode).needs_cost:
            t0 = time.perf_counter()
            costs = self.ssft_cost_matrices(prompts, traces)
            stats["match_seconds"].append(time.perf_counter() - t0)
        out, step = [], self._ssft_step()
        for b, (p, ts) in enumerate(zip(prompts, traces)):
            rng = np.random.default_rng([self._ssft_seed(), step, question_key(p)])
            a, st = match_question(None if costs is None else costs[b], mode, len(self.fork_token_ids), len(ts), rng)
            out.append(a)
            if costs is not None:
                for k, v in vars(st).items():
                    if k != "nonfinite_matched" or st.nonfinite_costs:
                        stats[k].extend(v if isinstance(v, list) else [v])
        return out, stats

    def ssft_build_rows(self, prompts, traces, assignments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded input_ids, attention_mask, labels [sum_b M_b, S] of the matched sequences."""
        return build_rows(prompts, traces, assignments, self.fork_token_ids, self.ssft_args.ssft_fork_token_loss,
                          self.ssft_pad_token_id, layout=self.ssft_layout)

    # ---------------------------------------------------------------- step 3: set loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "ssft_prompt_ids" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        split = "train" if model.training else "eval"
        prompts, traces = self._unpack(inputs)
        traces = self.ssft_select_traces(prompts, traces)
        assignments, stats = self.ssft_assignments(prompts, traces, self.ssft_args.ssft_assignment)
        counts = np.zeros(len(self.fork_token_ids), dtype=np.int64)
        for a in assignments:
            if a is not None:
                np.add.at(counts, a, 1)
        if split == "train":
            self.ssft_match_counts = self.ssft_match_counts + all_reduce_sum(torch.from_numpy(counts.copy())).numpy()
        self.ssft_record(split, stats, counts)

        device = inputs["ssft_prompt_ids"].device
        rows = self.ssft_build_rows(prompts, traces, assignments)
        denom = num_items_in_batch if num_items_in_batch is not None else self._ssft_loss_tokens(traces)
        scale = 1.0
        if (num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.args.world_size > 1):
            scale = float(self.accelerator.num_processes)  # DDP averages the gradients across ranks
        deepspeed = getattr(self, "is_deepspeed_enabled", False)  # its engine owns the backward: one slice
        unwrapped = self.accelerator.unwrap_model(model)
        first = self.ssft_loss_counts == {}  # first micro-batch of the run: report its packed layout
        loss = sliced_set_loss(
            model, OutputHead(unwrapped), *(x.to(device) for x in rows), denom=denom, scale=scale,
            slice_tokens=2**62 if deepspeed else self.ssft_args.ssft_loss_slice_tokens,
            min_slice_tokens=auto_slice_tokens(unwrapped), chunk_tokens=self.ssft_args.ssft_logits_chunk_tokens,
            backward=self._ssft_slice_backward(model, num_items_in_batch), packing=self.ssft_packing,
            stats=self.ssft_loss_counts,
        )
        if first and self.ssft_packing and self.args.process_index == 0:
            print(first_batch_line(rows[0].shape[0], self.ssft_loss_counts), flush=True)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _ssft_slice_backward(self, model, num_items_in_batch):
        """Back-propagation of a set-loss slice before the last one, as `Trainer.training_step` does it for the
        returned loss, under ``no_sync`` (gradients synchronise once, in the trainer's own backward). None
        when there is no backward (evaluation)."""
        if not (torch.is_grad_enabled() and model.training):
            return None
        divide = num_items_in_batch is None  # the trainer divides the returned loss by the GA steps then
        # DDP: accumulate locally, all-reduce once (the last slice). FSDP2: accelerate's no_sync would keep a
        # full unsharded gradient on every rank until the last slice, so each slice reduce-scatters instead.
        multi = self.accelerator.num_processes > 1 and not getattr(self.accelerator, "is_fsdp2", False)

        def backward(loss: torch.Tensor) -> None:
            if divide:
                loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
            with self.accelerator.no_sync(model) if multi else contextlib.nullcontext():
                self.accelerator.backward(loss)

        return backward

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "ssft_prompt_ids" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs, return_outputs=False)
        return loss.detach(), None, None

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.ssft_args is not None:
            check_parallelism(self)
        path = resume_dir(resume_from_checkpoint, self.args.output_dir) if self.ssft_args else None
        if path:
            self.ssft_load_state(path)
        return super().train(resume_from_checkpoint, *args, **kwargs)

