"""How a conversation becomes text, rendered by one family of functions for curation, training, inference
and export alike: the Llama-2 chat format (`data.prompt_format: llama2`, the default), the base
tokenizer's own chat template (`chat_template`, e.g. Llama-3's), Firefly's format (`firefly`) or plain text
(`text`). A format gives the prompt (up to where the answer starts, without the BOS the tokenizer adds) and
the completion (the answer as it follows, without the token that ends it: the trainer appends that as EOS,
and generation stops on it). A conversation of several turns is one training row: its prompt is what
`make chat` sends for the history, and its earlier answers (conversation_row) are in the loss with the last.

The Llama-2 chat format:

    <s>[INST] <<SYS>>
    {system}
    <</SYS>>

    {user} [/INST] {answer} </s><s>[INST] {next user} [/INST]

This is the format of Meta's reference code (`llama/generation.py`, `chat_completion`) and of the official
chat template shipped with meta-llama/Llama-2-7b-chat-hf, which LLAMA2_CHAT_TEMPLATE is verbatim: a
closed turn ends with the answer, one space, then EOS. `<s>` and `</s>` are the tokenizer's BOS and EOS:
the tokenizer adds the first BOS when it encodes, and EOS is appended to the completion as an id, so
neither is written into a single-turn prompt or a completion here.

Text is always text: a question that mentions `</s>` or `<|eot_id|>` must reach the model as those
characters, never as the control token. So a format renders a `Rendered`: the text, and where in it the
format itself wrote a control token (a chat's closed turns, a template's headers). core/tokens.py encodes
exactly those spans as control ids and everything else as text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from core.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


@dataclass(frozen=True)
class Rendered:
    """Text in a chat format, and the (start, end) character spans where the format wrote a control token
    (BOS, EOS, a template's special tokens). Every other character is text, even where it spells one."""

    text: str
    controls: tuple[tuple[int, int], ...] = ()

    def __add__(self, other: Rendered | str) -> Rendered:
        other = as_rendered(other)
        shift = len(self.text)
        moved = tuple((start + shift, end + shift) for start, end in other.controls)
        return Rendered(self.text + other.text, self.controls + moved)

    def sliced(self, start: int, end: int | None = None) -> Rendered:
        """The text[start:end], with the control spans that lie wholly inside it."""
        end = len(self.text) if end is None else end
        kept = tuple((a - start, b - start) for a, b in self.controls if start <= a and b <= end)
        return Rendered(self.text[start:end], kept)


def curated_row(
    prompt: str, completion: str, controls: Sequence[Sequence[int]] | None
) -> tuple[Rendered, Rendered]:
    """A curated row's prompt and completion with the control tokens its format wrote (the row's `controls`
    column: [start, end] spans over prompt + completion)."""
    whole = Rendered(prompt + completion, tuple((start, end) for start, end in controls or ()))
    return whole.sliced(0, len(prompt)), whole.sliced(len(prompt))


class TrainingRow(NamedTuple):
    """A curated row as training encodes it: the prompt, the completion (the last answer), and the character
    spans in the prompt of a conversation's earlier answers, each with the token that closes it: the loss
    covers them as it covers the completion and its EOS."""

    prompt: Rendered
    completion: Rendered
    earlier_answers: tuple[tuple[int, int], ...] = ()


def training_row(row: Mapping[str, Any]) -> TrainingRow:
    """A curated row (prompt, completion, controls, earlier_answers columns) as a TrainingRow; datasets
    curated before conversations existed have no earlier_answers."""
    prompt, completion = curated_row(row["prompt"], row["completion"], row.get("controls"))
    spans = tuple((start, end) for start, end in row.get("earlier_answers") or ())
    return TrainingRow(prompt, completion, spans)


def as_rendered(value: Rendered | str) -> Rendered:
    """A plain string is text only: nothing in it is a control token."""
    return value if isinstance(value, Rendered) else Rendered(value)


def control(token: str) -> Rendered:
    return Rendered(token, ((0, len(token)),))


def render_llama2(
    user: str,
    system: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    eos_token: str = "</s>",
    bos_token: str = "<s>",
) -> Rendered:
    """The prompt up to and including the final `[/INST]`, without the leading BOS.

    `history` holds earlier (user, answer) turns of a chat; each closed turn ends with the answer, a space
    and EOS, and the next opens with BOS (control tokens, written by the format). The system prompt goes
    into the first user turn, and the turn is stripped as a whole, as Meta's code and template do. A blank
    system prompt means none: the conversation has no system message (the official template would render
    an empty `<<SYS>>` block).
    """
    rendered = Rendered("")
    for index, (turn_user, turn_answer) in enumerate([*history, (user, None)]):
        content = turn_user
        if index == 0 and system and system.strip():
            content = B_SYS + system + E_SYS + content
        if index:
            rendered += control(bos_token)
        rendered += f"{B_INST} {content.strip()} {E_INST}"
        if turn_answer is not None:
            rendered += render_completion(turn_answer)
            rendered += control(eos_token)
    return rendered


def render_prompt(
    user: str,
    system: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    eos_token: str = "</s>",
    bos_token: str = "<s>",
) -> str:
    """render_llama2's text."""
    return render_llama2(user, system, history, eos_token, bos_token).text


def render_completion(answer: str) -> str:
    """The answer as it follows `[/INST]` in a closed turn: one space, the text, one space. EOS follows as
    a token (the trainer appends it), so the target ends `{answer} </s>` like Meta's closed turns."""
    return " " + answer.strip() + " "


def without_system(prompt: str | pa.Array | pa.ChunkedArray, system: str | None) -> Any:
    """A rendered prompt (or prompt + completion) without its system prompt: what the row itself says,
    for comparing rows by content, since every row shares the system prompt. Llama-2's `<<SYS>>` block
    goes whole; in another template's text, the system prompt's own words. An Arrow array of texts: each
    text's, by Arrow."""
    if not system or not system.strip():
        return prompt
    block = (B_SYS + system + E_SYS).lstrip()
    if isinstance(prompt, str):
        return prompt.replace(block if block in prompt else system.strip(), "", 1)
    import pyarrow.compute as pc

    has_block = pc.match_substring(prompt, block)
    without_block = pc.replace_substring(prompt, block, "", max_replacements=1)
    if pc.all(has_block).as_py():  # as in Llama-2's rows
        return without_block
    without_words = pc.replace_substring(prompt, system.strip(), "", max_replacements=1)
    return pc.if_else(has_block, without_block, without_words)


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


class FormatTexts:
    """The texts of a format's rendered prompt and completion, without where its control tokens are."""

    def prompt(self, user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        return self.rendered_prompt(user, system, history).text

    def completion(self, answer: str) -> str:
        return self.rendered_completion(answer).text


@dataclass(frozen=True)
class Llama2Format(FormatTexts):
    """Meta's Llama-2 chat format (`data.prompt_format: llama2`), with the tokenizer's BOS and EOS texts."""

    name: ClassVar[str] = "llama2"
    bos_token: str = "<s>"
    eos_token: str = "</s>"

    @property
    def end_of_answer(self) -> str:
        return self.eos_token

    def rendered_prompt(
        self, user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()
    ) -> Rendered:
        return render_llama2(user, system, history, eos_token=self.eos_token, bos_token=self.bos_token)

    def rendered_completion(self, answer: str) -> Rendered:
        return Rendered(render_completion(answer))


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
class TemplateFormat(FormatTexts):
    """A tokenizer's own chat template (`data.prompt_format: chat_template`). `end_of_answer` is the special
    token the template closes an assistant turn with (`<|eot_id|>` for Llama-3): the token training
    teaches the model to stop on. `bos_written` is the BOS text the template writes that the tokenizer
    also adds, left out of the prompt so that the sequence has one BOS, not two. Built by template_format."""

    name: ClassVar[str] = "chat_template"
    template: str
    bos_token: str | None
    end_of_answer: str
    bos_written: str = ""
    special_tokens: tuple[str, ...] = ()  # the tokenizer's: where the template writes one, it is a control

    def render(self, conversation: list[dict], add_generation_prompt: bool) -> str:
        return render_template(
            self.template, conversation, add_generation_prompt, self.bos_token, self.end_of_answer
        )

    def rendered(self, conversation: list[dict], add_generation_prompt: bool) -> Rendered:
        """The template's text, with the special tokens the template itself wrote as controls: it is rendered
        once more with each message's content replaced by a marker, so that what lies between the markers is
        the template's and what takes their place is the message's text."""
        text = self.render(conversation, add_generation_prompt)
        marked = [{**message, "content": _MARKER.format(i)} for i, message in enumerate(conversation)]
        skeleton = _MARKER_PATTERN.split(self.render(marked, add_generation_prompt))
        for written in (lambda content: content, str.strip):  # how the template wrote the content
            rebuilt = Rendered("")
            for index, part in enumerate(skeleton):
                if index % 2:
                    rebuilt += written(conversation[int(part)]["content"])
                else:
                    rebuilt += controls_in(part, self.special_tokens)
            if rebuilt.text == text:
                return rebuilt
        raise UserError(
            "the base tokenizer's chat template changes the messages' text beyond stripping it, so their "
            "text cannot be told from its own control tokens: use data.prompt_format: llama2"
        )

    def rendered_prompt(
        self, user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()
    ) -> Rendered:
        return self.rendered(messages(user, system, history), True).sliced(len(self.bos_written))

    def rendered_completion(self, answer: str) -> Rendered:
        """What the template writes after the generation prompt for this answer, without end_of_answer."""
        turn = [{"role": "user", "content": "?"}]
        opened = self.render(turn, True)
        closed = self.rendered([*turn, {"role": "assistant", "content": answer}], False)
        ending = closed.text.rstrip()
        if ending.endswith(self.end_of_answer):
            ending = ending[: -len(self.end_of_answer)]
        return closed.sliced(len(opened), len(ending))


# A message's place in a rendered template: private-use characters, which no template writes.
_MARKER = "\ue000{}\ue001"
_MARKER_PATTERN = re.compile("\ue000(\\d+)\ue001")


def controls_in(text: str, special_tokens: Collection[str]) -> Rendered:
    """Text a format wrote itself, each special token in it a control (the longest first, where two start
    at the same place)."""
    if not special_tokens:
        return Rendered(text)
    pattern = special_token_pattern(tuple(special_tokens))
    return Rendered(text, tuple(match.span() for match in pattern.finditer(text)))


@cache
def special_token_pattern(special_tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True)))


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
    return TemplateFormat(template, bos_token, end, written, tuple(special_tokens))


# Firefly's format (yangjianxin1/Firefly, component/dataset.py, the bloom QLoRA recipe):
# `<s>{input1}</s>{target1}</s>{input2}</s>{target2}</s>`, each message encoded on its own between the
# control tokens, the loss on every target and its `</s>`. It has no system message. As a chat template it
# travels with the saved tokenizer and is read back as a TemplateFormat like any other.
FIREFLY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('the firefly format has no system message') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}{{ message['content'] + eos_token }}"
    "{% endfor %}"
)

# Plain text (`data.prompt_format: text`): no prompt format at all. A model trained on it continues the text
# it is given; the template says so to every server that reads the saved tokenizer.
PLAIN_TEXT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


@dataclass(frozen=True)
class PlainTextFormat(FormatTexts):
    """No format (`data.prompt_format: text`): the prompt is the text to continue, as typed, and a document
    in training is all completion (the loss on every token, then EOS). It has no turns and no system
    prompt: a model that continues text has no chat to hold."""

    name: ClassVar[str] = "text"
    end_of_answer: str = "</s>"  # the tokenizer's EOS, which ends each document

    def rendered_prompt(
        self, user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()
    ) -> Rendered:
        if history or (system and system.strip()):
            raise UserError(
                "this model was trained on plain text (data.prompt_format: text): it continues a text, and "
                "has no chat history or system prompt; use make infer with the text to continue"
            )
        return Rendered(user)

    def rendered_completion(self, answer: str) -> Rendered:
        return Rendered(answer)


ChatFormat = Llama2Format | TemplateFormat | PlainTextFormat


def conversation_row(chat: ChatFormat, system: str | None, turns: Sequence[tuple[str, str]]) -> TrainingRow:
    """A conversation of (user, answer) turns as one training row: the prompt the format renders for the
    last question with every earlier turn as history (what `make chat` sends), the last answer as the
    completion, and where each earlier answer and its closing token lie in the prompt. The earlier answer
    must be written there exactly as the format writes a trained answer after its prompt; a format that
    writes history otherwise (a template that rewrites past turns) would train answers inference never
    continues, and is refused."""
    *history, (user, answer) = turns
    prompt = chat.rendered_prompt(user, system, history)
    spans = []
    for index, (turn_user, turn_answer) in enumerate(history):
        start = len(chat.rendered_prompt(turn_user, system, history[:index]).text)
        closed = chat.rendered_completion(turn_answer).text + chat.end_of_answer
        end = start + len(closed)
        if prompt.text[start:end] != closed or (end - len(chat.end_of_answer), end) not in prompt.controls:
            raise UserError(
                f"the {chat.name} format writes an earlier turn of a conversation unlike the answer it "
                "trains, so training and make chat would see different histories: use data.prompt_format: "
                "llama2"
            )
        spans.append((start, end))
    return TrainingRow(prompt, chat.rendered_completion(answer), tuple(spans))
