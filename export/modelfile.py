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
from core.prompts import B_INST, B_SYS, E_INST, E_SYS


def ollama_template(bos: str, eos: str) -> str:
    """Meta's Llama-2 chat format as an Ollama (Go text/template) TEMPLATE."""
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
    bos: str,
    eos: str,
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
        f"TEMPLATE {quoted(ollama_template(bos, eos), 'the template')}",
    ]
    if system and system.strip():
        lines.append(f"SYSTEM {quoted(system, 'data.system_prompt')}")
    # EOS ends every trained answer (Ollama also stops at the EOS token itself); `[INST]` is where a
    # model that missed it would start the user's next turn.
    lines += [f'PARAMETER stop "{eos}"', f'PARAMETER stop "{B_INST}"', f"PARAMETER num_ctx {context}"]
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
