"""Hostile chat templates (they ship with model folders): the sandbox refuses escapes, and renders
are bounded in time and size; a template sgc cannot use falls back to a known format."""

from __future__ import annotations

import pytest

from compiler import budgets
from compiler.chat_template import FORMATS, ChatFormat, ChatTemplateError
from tests.hostile import bounded

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template,message", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError|undefined|Undefined"),
    ("{{ messages.__class__.__init__.__globals__ }}", "SecurityError|undefined|Undefined"),
    ("{{ 'x' * 10000000000 }}", "template_chars"),
    ("{{ [1] * 10000000000 }}", "template_chars"),
    ("{{ 10 ** 1000000000 }}", "template_chars"),
    ("{{ 'x' | center(10000000000) }}", "template_chars"),
    ("{{ 'x'.ljust(10000000000) }}", "template_chars"),
    ("{% for i in range(10**9) %}x{% endfor %}", "template_chars|range|OverflowError"),
    ("{{ raise_exception('no system role') }}", "the template raised: no system role"),
    ("{% for m in messages %", "does not compile"),
    ("{% set x = messages.append(1) %}", "SecurityError|immutable|unsafe"),
])
def test_hostile_templates_are_refused(template, message):
    with bounded(seconds=5, mem_mb=100), pytest.raises(ChatTemplateError, match=message):
        ChatFormat.from_template(template)


def test_a_render_that_runs_too_long_ends_at_its_deadline():
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j.real }}{% endfor %}{% endfor %}"
    with bounded(seconds=5, mem_mb=100), budgets.budget_overrides(template_seconds=0.3):
        with pytest.raises(ChatTemplateError, match="template_seconds"):
            ChatFormat.from_template(spin)


def test_an_output_bomb_is_cut_at_the_size_budget():
    bomb = "{% for i in range(100000) %}" + "y" * 1000 + "{% endfor %}"
    with bounded(seconds=5, mem_mb=100), pytest.raises(ChatTemplateError, match="template_chars"):
        ChatFormat.from_template(bomb)


class _Tok:
    bos_token = "<s>"
    eos_token = "</s>"
    bos_token_id = 1

    def __init__(self, template: str) -> None:
        self.chat_template = template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [5] * len(text)


def test_a_hostile_template_in_a_model_folder_falls_back_to_a_known_format():
    with bounded(seconds=5, mem_mb=100):
        fmt = ChatFormat.from_tokenizer(_Tok("<|im_start|>{{ 'x' * 10000000000 }}"), "smollm2")
    assert fmt.roles == FORMATS["chatml"].roles


def test_a_good_template_still_derives_its_format():
    fmt = ChatFormat.from_template(CHATML)
    assert fmt.roles["user"] == ("<|im_start|>user\n", "<|im_end|>\n") and fmt.end_of_turn == "<|im_end|>"
