"""The Llama-2 chat format, rendered by one function for curation, training and inference alike.

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
    """A rendered prompt (or prompt + completion) without its system block: what the row itself says,
    for comparing rows by content, since every row shares the system prompt."""
    if system and system.strip():
        return prompt.replace((B_SYS + system + E_SYS).lstrip(), "", 1)
    return prompt


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
