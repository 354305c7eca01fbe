"""Multi-turn conversations, in one of three formats (the source's `format`), each a JSON list or JSONL:

- `messages` (OpenAI / TRL): {"messages": [{"role": "system" | "user" | "assistant", "content": str}]}
- `sharegpt`: {"conversations": [{"from": "system" | "human" | "gpt", "value": str}]}; some dumps say
  "user" and "assistant", which are read as "human" and "gpt".
- `moss` (Firefly's MOSS records): {"conversation": [{"human": str, "assistant": str}], "system": str},
  one element per turn; "system" is optional, and the other keys (conversation_id, category, dataset)
  are not read.

A conversation is an optional system message, then user and assistant messages taking turns, starting
with the user's and ending with an answer. A record that is not one is counted under the first reason it
meets (in the order of REASONS), never fatal. Texts are kept exactly as in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.inputs import numbered_json_records

CONVERSATION_FORMATS = ("messages", "sharegpt", "moss")

NOT_A_RECORD = "not a conversation record"
UNKNOWN_ROLE = "a turn with an unknown role"
EMPTY_CONVERSATION = "an empty conversation"
EMPTY_MESSAGE = "an empty message"
SYSTEM_NOT_FIRST = "a system message after the first turn"
TWO_USER_TURNS = "two user turns in a row"
TWO_ASSISTANT_TURNS = "two assistant turns in a row"
NO_FINAL_ANSWER = "does not end with an answer"
SYSTEM_NOT_IN_FORMAT = "a system message, which the run's format has no place for (firefly)"
REASONS = (
    NOT_A_RECORD,
    UNKNOWN_ROLE,
    EMPTY_CONVERSATION,
    EMPTY_MESSAGE,
    SYSTEM_NOT_FIRST,
    TWO_USER_TURNS,
    TWO_ASSISTANT_TURNS,
    NO_FINAL_ANSWER,
    SYSTEM_NOT_IN_FORMAT,
)

# Per format: the key of the message list, a message's role and text keys, and its roles by their names.
_LAYOUTS = {
    "messages": (
        "messages",
        "role",
        "content",
        {"system": "system", "user": "user", "assistant": "assistant"},
    ),
    "sharegpt": (
        "conversations",
        "from",
        "value",
        {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"},
    ),
}
_FIRST_BAD_KEPT = 10


@dataclass(frozen=True)
class Conversation:
    position: int  # the record's line in a JSONL file, or its index from 1 in a JSON list
    system: str | None  # the conversation's own system message, if it has one
    turns: tuple[tuple[str, str], ...]  # (user, assistant) pairs in order, texts exactly as in the file


@dataclass
class ConversationStats:
    records_read: int = 0
    bad: dict[str, int] = field(default_factory=dict)  # reason -> count
    first_bad: list[str] = field(default_factory=list)  # up to 10 "line N: reason" ("record N" in a list)


class _Bad(Exception):
    """A record that is not a conversation, with the reason."""


def read_conversations(
    path: Path, format: str, stats: ConversationStats, allow_system: bool = True
) -> list[Conversation]:
    """The file's good conversations, in file order; the bad records are counted in `stats`, so that one
    broken record in a large dump costs that record, not the run. Without `allow_system` (a format that has
    none), a conversation with a system message is a bad record. An unreadable file, or a JSON list that
    is not valid JSON, is a UserError."""
    if format not in CONVERSATION_FORMATS:
        raise ValueError(f"unknown conversation format {format!r}: expected one of {CONVERSATION_FORMATS}")
    place, records = numbered_json_records(path, "conversation file")
    conversations = []
    for position, record in records:
        stats.records_read += 1
        try:
            messages = _moss_messages(record) if format == "moss" else _messages(record, *_LAYOUTS[format])
            conversations.append(_conversation(position, messages, allow_system))
        except _Bad as bad:
            reason = str(bad)
            stats.bad[reason] = stats.bad.get(reason, 0) + 1
            if len(stats.first_bad) < _FIRST_BAD_KEPT:
                stats.first_bad.append(f"{place} {position}: {reason}")
    return conversations


def _messages(
    record: object, list_key: str, role_key: str, text_key: str, roles: dict[str, str]
) -> list[tuple[str, str]]:
    """(role, text) per message of a `messages` or `sharegpt` record, the role one of system, user and
    assistant. The structure is checked over the whole record before any role, so that a record is
    NOT_A_RECORD whatever its roles."""
    if not isinstance(record, dict) or not isinstance(record.get(list_key), list):
        raise _Bad(NOT_A_RECORD)
    messages = record[list_key]
    for message in messages:
        if not (
            isinstance(message, dict)
            and isinstance(message.get(role_key), str)
            and isinstance(message.get(text_key), str)
        ):
            raise _Bad(NOT_A_RECORD)
    if any(message[role_key] not in roles for message in messages):
        raise _Bad(UNKNOWN_ROLE)
    return [(roles[message[role_key]], message[text_key]) for message in messages]


def _moss_messages(record: object) -> list[tuple[str, str]]:
    """(role, text) per message of a MOSS record: its system prompt, then each turn's two messages."""
    if not isinstance(record, dict) or not isinstance(record.get("conversation"), list):
        raise _Bad(NOT_A_RECORD)
    system = record.get("system")
    turns = record["conversation"]
    if not isinstance(system, str | None) or not all(
        isinstance(turn, dict)
        and isinstance(turn.get("human"), str)
        and isinstance(turn.get("assistant"), str)
        for turn in turns
    ):
        raise _Bad(NOT_A_RECORD)
    messages = [("system", system)] if system is not None else []
    for turn in turns:
        messages += [("user", turn["human"]), ("assistant", turn["assistant"])]
    return messages


def _conversation(position: int, messages: list[tuple[str, str]], allow_system: bool) -> Conversation:
    """The conversation the messages make, or _Bad with the first reason (in the order of REASONS) that
    they are not one."""
    # A blank system message is no system message, wherever it is.
    messages = [(role, text) for role, text in messages if role != "system" or text.strip()]
    roles = [role for role, _ in messages]
    spoken = [role for role in roles if role != "system"]
    if not spoken:
        raise _Bad(EMPTY_CONVERSATION)
    if any(role != "system" and not text.strip() for role, text in messages):
        raise _Bad(EMPTY_MESSAGE)
    if "system" in roles[1:]:
        raise _Bad(SYSTEM_NOT_FIRST)
    # The user speaks first: an answer before any question is one answer too many.
    previous = ["assistant", *spoken]
    pairs = list(zip(previous, spoken, strict=False))
    if ("user", "user") in pairs:
        raise _Bad(TWO_USER_TURNS)
    if ("assistant", "assistant") in pairs:
        raise _Bad(TWO_ASSISTANT_TURNS)
    if spoken[-1] == "user":
        raise _Bad(NO_FINAL_ANSWER)
    system = messages[0][1] if roles[0] == "system" else None
    if system is not None and not allow_system:
        raise _Bad(SYSTEM_NOT_IN_FORMAT)
    texts = [text for role, text in messages if role != "system"]
    return Conversation(position, system, tuple(zip(texts[::2], texts[1::2], strict=True)))
