"""How a conversation becomes text, rendered by one family of functions for curation, training, inference
and export alike: the Llama-2 chat format (`data.prompt_format: llama2`, the default) or the base
tokenizer's own chat template (`chat_template`, e.g. Llama-3's). A format gives the prompt (up to where the
answer starts, without the BOS the tokenizer adds) and the completion (the answer as it follows, without
the token that ends it: the trainer appends that as EOS, and generation stops on it).

The Llama-2 chat format:

    <s>[INST] <<SYS>>
    {system}
    <</SYS>>

    {user} [/INST] {answer} </s><s>[INST] {next user} [/INST]

This is the format of Meta's reference code (`llama/generation.py`, `chat_completion`) and of the official
chat template shipped with meta-llama/Llama-2-7b-chat-hf, which LLAMA2_CHAT_TEMPLATE is verbatim: a
closed turn ends with the answer, one space, then EOS. `<s>` and `</s>` are the tokenizer's BOS and EOS:
the tokenizer adds the first BOS when it encodes, and the trainer appends EOS to the completion, so
neither is written into a prompt or a completion here (a literal `<s>` would give a double BOS).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar

from core.errors import UserError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def render_prompt(
    user: str,
    system: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    eos_token: str = "</s>",
    bos_token: str = "<s>",
) -> str:
    """The prompt text up to and including the final `[/INST]`, without the leading BOS.

    `history` holds earlier (user, answer) turns of a chat; each closed turn ends with the answer, a space
    and EOS, and the next opens with BOS. The system prompt goes into the first user turn, and the turn
    is stripped as a whole, as Meta's code and template do. A blank system prompt means none: the
    conversation has no system message (the official template would render an empty `<<SYS>>` block).
    """
    turns = [*history, (user, None)]
    parts = []
    for index, (turn_user, turn_answer) in enumerate(turns):
        content = turn_user
        if index == 0 and system and system.strip():
            content = B_SYS + system + E_SYS + content
        opening = "" if index == 0 else bos_token
        parts.append(f"{opening}{B_INST} {content.strip()} {E_INST}")
        if turn_answer is not None:
            parts.append(render_completion(turn_answer) + eos_token)
    return "".join(parts)


def render_completion(answer: str) -> str:
    """The answer as it follows `[/INST]` in a closed turn: one space, the text, one space. EOS follows as
    a token (the trainer appends it), so the target ends `{answer} </s>` like Meta's closed turns."""
    return " " + answer.strip() + " "


def without_system(prompt: str, system: str | None) -> str:
    """A rendered prompt (or prompt + completion) without its system prompt: what the row itself says,
    for comparing rows by content, since every row shares the system prompt. Llama-2's `<<SYS>>` block
    goes whole; in another template's text, the system prompt's own words."""
    if not system or not system.strip():
        return prompt
    block = (B_SYS + system + E_SYS).lstrip()
    return prompt.replace(block if block in prompt else system.strip(), "", 1)


# The official Llama-2-chat template, character for character, so that `apply_chat_template` on the
# saved tokenizer, and every server that reads it, gives exactly what render_prompt gives (tests check it).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Llama2Format:
    """Meta's Llama-2 chat format (`data.prompt_format: llama2`), with the tokenizer's BOS and EOS texts."""

    name: ClassVar[str] = "llama2"
    bos_token: str = "<s>"
    eos_token: str = "</s>"

    @property
    def end_of_answer(self) -> str:
        return self.eos_token

    def prompt(self, user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        return render_prompt(user, system, history, eos_token=self.eos_token, bos_token=self.bos_token)

    def completion(self, answer: str) -> str:
        return render_completion(answer)


def messages(user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """A conversation as chat-template messages; a blank system prompt means none, as in render_prompt."""
    conversation = [{"role": "system", "content": system}] if system and system.strip() else []
    for turn_user, turn_answer in history:
        conversation += [
            {"role": "user", "content": turn_user},
            {"role": "assistant", "content": turn_answer},
        ]
    return [*conversation, {"role": "user", "content": user}]


@dataclass(frozen=True)
class TemplateFormat:
    """A tokenizer's own chat template (`data.prompt_format: chat_template`). `end_of_answer` is the special
    token the template closes an assistant turn with (`<|eot_id|>` for Llama-3): the token training
    teaches the model to stop on. `bos_written` is the BOS text the template writes that the tokenizer
    also adds, left out of the prompt so that the sequence has one BOS, not two. Built by template_format."""

    name: ClassVar[str] = "chat_template"
    template: str
    bos_token: str | None
    end_of_answer: str
    bos_written: str = ""

    def render(self, conversation: list[dict], add_generation_prompt: bool) -> str:
        return render_template(
            self.template, conversation, add_generation_prompt, self.bos_token, self.end_of_answer
        )

    def prompt(self, user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        return self.render(messages(user, system, history), True).removeprefix(self.bos_written)

    def completion(self, answer: str) -> str:
        """What the template writes after the generation prompt for this answer, without end_of_answer."""
        turn = [{"role": "user", "content": "?"}]
        opened = self.render(turn, True)
        closed = self.render([*turn, {"role": "assistant", "content": answer}], False)
        return closed[len(opened) :].rstrip().removesuffix(self.end_of_answer)


def render_template(
    template: str,
    conversation: list[dict],
    add_generation_prompt: bool,
    bos_token: str | None,
    eos_token: str,
) -> str:
    """A chat template rendered as transformers' apply_chat_template renders it; an error is one line."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        texts, _ = render_jinja_template(
            conversations=[conversation],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except TemplateError as error:
        raise UserError(f"the base tokenizer's chat template failed: {error}") from None
    return texts[0]


def template_format(
    template: str, bos_token: str | None, eos_token: str, special_tokens: Collection[str], adds_bos: bool
) -> TemplateFormat:
    """The format of a chat template, checked: the answer must continue the generation prompt (else the
    prompts of training and inference would differ) and end with a special token (else the model could
    not learn to stop). `adds_bos`: the tokenizer adds BOS when it encodes."""
    sentinel = "ANSWER-7f3a"
    turn = [{"role": "user", "content": "?"}]
    opened = render_template(template, turn, True, bos_token, eos_token)
    closed = render_template(
        template, [*turn, {"role": "assistant", "content": sentinel}], False, bos_token, eos_token
    )
    if not closed.startswith(opened) or sentinel not in closed[len(opened) :]:
        raise UserError(
            "the base tokenizer's chat template does not write the answer right after its generation prompt, "
            "so training and inference would see different prompts: use data.prompt_format: llama2"
        )
    ending = closed.rpartition(sentinel)[2].rstrip()
    end = next(
        (token for token in sorted(special_tokens, key=len, reverse=True) if ending.endswith(token)), None
    )
    if not end:
        raise UserError(
            f"the base tokenizer's chat template ends an answer with {ending!r}, not a special token, so a "
            "model could not learn where to stop: use data.prompt_format: llama2"
        )
    written = bos_token if adds_bos and bos_token and opened.startswith(bos_token) else ""
    return TemplateFormat(template, bos_token, end, written)


ChatFormat = Llama2Format | TemplateFormat
