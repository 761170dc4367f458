"""Reasoning-model chat templates: where the forking token goes, and training rows agree with evaluation prompts.

Small Jinja templates written to behave like the real ones:
- ``r1``: DeepSeek-R1-distill style, the generation prompt opens the thinking block (``<|Assistant|><think>\\n``)
  and earlier assistant turns lose their reasoning (``content.split('</think>')[-1]``);
- ``qwen3``: Qwen3 style, an ``enable_thinking`` switch (default on: the generation prompt ends at
  ``<|im_start|>assistant\\n`` and the model opens ``<think>`` itself; off: an empty ``<think>\\n\\n</think>\\n\\n``
  block follows) and earlier turns' reasoning stripped;
- ``qwen3_off``: the same template with the switch turned off inside the template (how a recipe makes it stick:
  the saved tokenizer carries the template, so training and evaluation render the same prompt).

The rule (docs/paper_protocol.md): the forking token, with its layout, goes right after whatever the generation
prompt renders with the template's own defaults; training rows and evaluation prompts are both built from that
rendering, so they agree token for token.
"""

from __future__ import annotations

import pytest

from trl_ssft.layout import check_template_boundary, fork_span, tokenize_layout

NAMES = ["<think1>", "<think2>"]
R1 = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|User|>' + m['content'] }}"
      "{% elif m['role'] == 'assistant' %}{% set c = m['content'] %}{% if '</think>' in c %}"
      "{% set c = c.split('</think>')[-1] %}{% endif %}{{ '<|Assistant|>' + c + '<|im_end|>' }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}")
QWEN3 = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% set c = m['content'] %}{% if '</think>' in c %}"
         "{% set c = c.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
         "{{ '<|im_start|>assistant\\n' + c + '<|im_end|>\\n' }}{% else %}"
         "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
         "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
         "{% endif %}")
TEMPLATES = {"r1": R1, "qwen3": QWEN3, "qwen3_off": "{% set enable_thinking = false %}" + QWEN3}
GEN_PROMPT_END = {"r1": "<|Assistant|><think>\n", "qwen3": "<|im_start|>assistant\n",
                  "qwen3_off": "<|im_start|>assistant\n<think>\n\n</think>\n\n"}
PROMPT = [{"role": "user", "content": "sum 1 2"},
          {"role": "assistant", "content": "<think>\nold reasoning\n</think>\n\n\\boxed{3}"},
          {"role": "user", "content": "sum 4 5"}]


@pytest.fixture(scope="module")
def base_tok():
    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import build_tiny_tokenizer
    from trl_ssft.tokens import add_fork_tokens

    tok = build_tiny_tokenizer(corpus(make_rows(40, seed=1)), vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": ["<|User|>", "<|Assistant|>", "<think>", "</think>"]})
    add_fork_tokens(tok, NAMES)
    return tok


@pytest.mark.parametrize("layout", ["bare", "released"])
@pytest.mark.parametrize("style", list(TEMPLATES))
def test_training_rows_equal_evaluation_prompts(base_tok, style, layout):
    import copy

    from trl_ssft.data import render_prompt, tokenize_rows
    from trl_ssft.eval.inference import fork_prompt_ids, fork_prompt_strings
    from trl_ssft.rows import build_rows

    tok = copy.deepcopy(base_tok)
    tok.chat_template = TEMPLATES[style]
    lay = tokenize_layout(tok, layout)
    check_template_boundary(tok, lay, NAMES[0])
    trace = ("reasoning: 4+5=9\n</think>\n\n\\boxed{9}" if style != "qwen3_off" else "4+5=9 so \\boxed{9}")
    if style == "qwen3":
        trace = "<think>\n" + trace  # the template left the thinking block to the model: the trace opens it
    row = tokenize_rows([{"prompt": PROMPT, "traces": [trace]}], tok, max_length=None)[0]
    ids, _, _ = build_rows([row["prompt_ids"]], [row["trace_ids"]], [[1]], tok.convert_tokens_to_ids(NAMES), False,
                           0, layout=lay)
    span = fork_span(tok.convert_tokens_to_ids(NAMES[1]), lay)[0]
    train_prefix = ids[0, : len(row["prompt_ids"]) + len(span)].tolist()
    evals = fork_prompt_ids(tok, PROMPT, NAMES, lay)
    assert train_prefix == evals[1]  # the training row starts with exactly the evaluation prompt
    text = render_prompt(tok, PROMPT)
    assert "old reasoning" not in text  # earlier turns' reasoning is stripped in both (same rendering)
    assert text.endswith(GEN_PROMPT_END[style])
    strings = fork_prompt_strings(tok, PROMPT, NAMES, lay)
    assert strings[1] == text + lay.layout.render(NAMES[1])  # the token right after the generation prompt
    assert tok(strings[1], add_special_tokens=False)["input_ids"] == evals[1]
