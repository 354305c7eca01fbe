"""The Ollama Modelfile of an export: the trained prompt format as Ollama's TEMPLATE, the run's system
prompt as SYSTEM, the stops, and `make infer`'s decoding as PARAMETERs.

The TEMPLATE is a Go template over Ollama's `.Messages` and `.System` (Ollama gathers the system messages,
the Modelfile's SYSTEM unless the chat sends its own, into `.System`), built from the same pieces as
core/prompts.py: the system block goes into the first user turn; a closed turn ends ` {answer} </s>` and
the next opens with `<s>`; Ollama adds the first BOS when it tokenizes, as our tokenizer does. Go templates
cannot strip text, so messages are used as sent: Meta's format strips each turn, and Ollama's chat sends
the text it was given (type no leading or trailing spaces for an exact match).
"""

from __future__ import annotations

from core.config import InferenceConfig
from core.errors import UserError
from core.prompts import (
    B_INST,
    B_SYS,
    E_INST,
    E_SYS,
    ChatFormat,
    Llama2Format,
    PlainTextFormat,
    TemplateFormat,
)


def ollama_template(chat: ChatFormat) -> str:
    """The run's chat format as an Ollama (Go text/template) TEMPLATE."""
    if isinstance(chat, Llama2Format):
        return llama2_template(chat.bos_token, chat.eos_token)
    if isinstance(chat, PlainTextFormat):
        return "{{ .Prompt }}"  # the text to continue, as typed
    system, user, assistant, generation = template_pieces(chat)
    opening = f"{{{{ if .System }}}}{system[0]}{{{{ .System }}}}{system[1]}{{{{ end }}}}" if system else ""
    return (
        f"{opening}"
        f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{user[0]}{{{{ .Content }}}}{user[1]}'
        f'{{{{ else if eq .Role "assistant" }}}}{assistant[0]}{{{{ .Content }}}}{assistant[1]}{{{{ end }}}}'
        f"{{{{ end }}}}{generation}"
    )


def template_pieces(
    chat: TemplateFormat,
) -> tuple[tuple[str, str] | None, tuple[str, str], tuple[str, str], str]:
    """What a chat template writes around a system (None for a template without one, as Firefly's), a user
    and an assistant message, and its generation prompt, found by rendering marked messages. A template
    that does not wrap each message on its own (the text of a whole conversation is not those pieces in
    turn) cannot be an Ollama template."""
    marks = {"system": "SYSTEM-5c1e", "user": "USER-5c1e", "assistant": "ASSISTANT-5c1e", "next": "NEXT-5c1e"}

    def rendered(roles: list[str], generation: bool) -> str:
        messages = [{"role": "user" if role == "next" else role, "content": marks[role]} for role in roles]
        return chat.render(messages, generation).removeprefix(chat.bos_written)

    one_turn = rendered(["user"], False)
    user = tuple(one_turn.split(marks["user"]))
    generation = rendered(["user"], True).removeprefix(one_turn)
    try:
        system_before, _, rest = rendered(["system", "user"], False).partition(marks["system"])
        system = (system_before, rest.removesuffix(one_turn))
    except UserError:  # the template refuses a system message
        system = None
    answered = rendered(["user", "assistant"], False).removeprefix(one_turn)
    assistant = tuple(answered.split(marks["assistant"]))
    pieces = (system, user, assistant, generation)
    roles = ["system", "user", "assistant", "next"] if system else ["user", "assistant", "next"]
    whole = rendered(roles, True)
    rebuilt = (
        (system[0] + marks["system"] + system[1] if system else "") + user[0] + marks["user"] + user[1]
        + assistant[0] + marks["assistant"] + assistant[1] + user[0] + marks["next"] + user[1] + generation
    )  # fmt: skip
    if len(user) != 2 or len(assistant) != 2 or whole != rebuilt or "{{" in "".join(map(str, pieces)):
        raise UserError(
            "make export cannot write this chat template as an Ollama template (it does not wrap each "
            "message on its own): the GGUF files carry the template itself, for llama.cpp"
        )
    return pieces


def llama2_template(bos: str, eos: str) -> str:
    """Meta's Llama-2 chat format as an Ollama TEMPLATE."""
    user = (
        f"{{{{ if not $first }}}}{bos}{{{{ end }}}}{B_INST} "
        f"{{{{ if and $first $.System }}}}{B_SYS}{{{{ $.System }}}}{E_SYS}{{{{ end }}}}"
        f"{{{{ .Content }}}} {E_INST}{{{{ $first = false }}}}"
    )
    assistant = f" {{{{ .Content }}}} {eos}"
    return (
        '{{ $first := true }}{{ range .Messages }}{{ if eq .Role "user" }}'
        f'{user}{{{{ else if eq .Role "assistant" }}}}{assistant}{{{{ end }}}}{{{{ end }}}}'
    )


def quoted(text: str, what: str) -> str:
    """A Modelfile value in triple quotes, which cannot hold three quotes itself."""
    if '"""' in text:
        raise UserError(f'{what} holds """, which an Ollama Modelfile cannot quote: remove it')
    return f'"""{text}"""'


def modelfile(
    gguf_name: str,
    system: str | None,
    chat: ChatFormat,
    context: int,
    decoding: InferenceConfig,
    others: list[str],
) -> str:
    """The Modelfile text: FROM the GGUF file beside it, TEMPLATE, SYSTEM (none for a blank system prompt,
    as in core/prompts.py), stops and decoding."""
    lines = [
        "# Ollama: `ollama create NAME -f Modelfile`, then `ollama run NAME`.",
        *(f"# Or FROM ./{name}" for name in others),
        f"FROM ./{gguf_name}",
        f"TEMPLATE {quoted(ollama_template(chat), 'the template')}",
    ]
    if system and system.strip():
        lines.append(f"SYSTEM {quoted(system, 'data.system_prompt')}")
    # The end of an answer ends every trained answer (Ollama also stops at the EOS token itself); the opening
    # of a user turn (`[INST]`) is where a model that missed it would start the user's next turn.
    next_turn = ""
    if isinstance(chat, Llama2Format):
        next_turn = B_INST
    elif isinstance(chat, TemplateFormat):
        next_turn = template_pieces(chat)[1][0].strip()
    stops = [chat.end_of_answer, *([next_turn] if next_turn else [])]
    lines += [*(f'PARAMETER stop "{stop}"' for stop in stops), f"PARAMETER num_ctx {context}"]
    lines.append(f"PARAMETER num_predict {decoding.max_new_tokens}")
    lines.append(f"PARAMETER repeat_penalty {decoding.repetition_penalty}")
    if decoding.do_sample:
        lines += [
            f"PARAMETER temperature {decoding.temperature}",
            f"PARAMETER top_p {decoding.top_p}",
            f"PARAMETER seed {decoding.seed}",
        ]
    else:
        lines.append("PARAMETER temperature 0")  # greedy, as make infer with do_sample false
    return "\n".join(lines) + "\n"
