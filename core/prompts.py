"""The Llama-2 chat format, rendered by one function for curation, training and inference alike.

    <s>[INST] <<SYS>>
    {system}
    <</SYS>>

    {user} [/INST] {answer} </s>

`<s>` and `</s>` are the tokenizer's BOS and EOS: the tokenizer adds BOS when it encodes, and the
trainer appends EOS to the completion, so neither is written into the text here (a literal `<s>` in
the text would give a double BOS).
"""

from __future__ import annotations

from collections.abc import Sequence

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

    `history` holds earlier (user, answer) turns of a chat; each closed turn ends with EOS and the next
    opens with BOS, as Llama-2 chat was trained. The system prompt goes into the first user turn.
    """
    turns = [*history, (user, None)]
    parts = []
    for index, (turn_user, turn_answer) in enumerate(turns):
        text = turn_user.strip()
        if index == 0 and system and system.strip():
            text = B_SYS + system.strip() + E_SYS + text
        opening = "" if index == 0 else bos_token
        parts.append(f"{opening}{B_INST} {text} {E_INST}")
        if turn_answer is not None:
            parts.append(render_completion(turn_answer) + eos_token)
    return "".join(parts)


def render_completion(answer: str) -> str:
    """The answer as it follows `[/INST]`: one space, then the text. EOS is appended by the trainer."""
    return " " + answer.strip()


# The same format as a Jinja chat template, so that `tokenizer.apply_chat_template` on the saved
# tokenizer gives exactly what render_prompt gives (a test checks it).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] | trim %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% set content = message['content'] | trim %}"
    "{% if loop.index0 == 0 and system %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}"
    "{% endif %}"
    "{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% else %}"
    "{{ ' ' + message['content'] | trim + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)
