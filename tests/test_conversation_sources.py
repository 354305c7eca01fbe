"""The readers of conversation and plain text sources (data_prep/conversations.py, plain_text.py) on small
synthetic files, and on the sample files in data/samples, whose good and bad records are counted exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from data_prep.conversations import (
    EMPTY_CONVERSATION,
    EMPTY_MESSAGE,
    NO_FINAL_ANSWER,
    NOT_A_RECORD,
    SYSTEM_NOT_FIRST,
    TWO_ASSISTANT_TURNS,
    TWO_USER_TURNS,
    UNKNOWN_ROLE,
    Conversation,
    ConversationStats,
    read_conversations,
)
from data_prep.plain_text import TextStats, read_documents

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
SPECIAL_MARKERS = ("`</s>`", "`<|eot_id|>`")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def messages(*pairs: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


def line(*pairs: tuple[str, str]) -> str:
    return json.dumps(messages(*pairs))


def read(path: Path, format: str) -> tuple[list[Conversation], ConversationStats]:
    stats = ConversationStats()
    return read_conversations(path, format, stats), stats


# --- conversations: each format ---


def test_messages_records_become_conversations_with_their_lines(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            messages(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")),
            messages(("user", " Q1 \n"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2\n")),
        ],
    )
    path.write_text(path.read_text().replace("\n", "\n\n", 1))  # a blank line 2: positions are lines
    conversations, stats = read(path, "messages")
    assert conversations == [
        Conversation(1, "Be brief.", (("Hi", "Hello!"),)),
        Conversation(3, None, ((" Q1 \n", "A1"), ("Q2", "A2\n"))),
    ]
    assert (stats.records_read, stats.bad, stats.first_bad) == (2, {}, [])


def test_sharegpt_list_with_a_system_message_and_the_user_assistant_aliases(tmp_path):
    path = tmp_path / "sharegpt.json"
    records = [
        {
            "id": "a",
            "conversations": [
                {"from": "system", "value": "You teach Python."},
                {"from": "human", "value": "What is a set?"},
                {"from": "gpt", "value": "An unordered collection."},
            ],
        },
        {
            "conversations": [
                {"from": "user", "value": "Q"},
                {"from": "assistant", "value": "A"},
                {"from": "human", "value": "Q2"},
                {"from": "gpt", "value": "A2"},
            ]
        },
    ]
    path.write_text(json.dumps(records, indent=2))
    conversations, stats = read(path, "sharegpt")
    assert conversations == [
        Conversation(1, "You teach Python.", (("What is a set?", "An unordered collection."),)),
        Conversation(2, None, (("Q", "A"), ("Q2", "A2"))),
    ]
    assert stats.records_read == 2


def test_sharegpt_jsonl_reads_like_the_list(tmp_path):
    record = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    conversations, _ = read(write_jsonl(tmp_path / "s.jsonl", [record, record]), "sharegpt")
    assert conversations == [Conversation(1, None, (("Q", "A"),)), Conversation(2, None, (("Q", "A"),))]


def test_moss_records_with_and_without_a_system_prompt(tmp_path):
    path = write_jsonl(
        tmp_path / "moss.jsonl",
        [
            {
                "conversation_id": 1,
                "category": "Code",
                "conversation": [{"human": "H1", "assistant": "A1"}, {"human": "H2", "assistant": "A2"}],
                "dataset": "moss",
            },
            {
                "conversation_id": 2,
                "category": "Brainstorming",
                "system": "You are MOSS.",
                "conversation": [{"human": "H", "assistant": "A"}],
                "dataset": "moss",
            },
        ],
    )
    conversations, stats = read(path, "moss")
    assert conversations == [
        Conversation(1, None, (("H1", "A1"), ("H2", "A2"))),
        Conversation(2, "You are MOSS.", (("H", "A"),)),
    ]
    assert stats.bad == {}


def test_a_json_list_of_messages_records_is_numbered_by_record(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(
        json.dumps([messages(("user", "Q"), ("assistant", "A")), messages(("user", "Q"))], indent=2)
    )
    conversations, stats = read(path, "messages")
    assert conversations == [Conversation(1, None, (("Q", "A"),))]
    assert stats.first_bad == [f"record 2: {NO_FINAL_ANSWER}"]


@pytest.mark.parametrize("system", ["", "  \n"])
def test_a_blank_system_message_is_no_system_message(tmp_path, system):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            messages(("system", system), ("user", "Q"), ("assistant", "A")),
            {"system": system, "conversation": [{"human": "Q", "assistant": "A"}]},
        ],
    )
    assert read(path, "messages")[0][0] == Conversation(1, None, (("Q", "A"),))
    assert read(path, "moss")[0][0] == Conversation(2, None, (("Q", "A"),))


# --- conversations: bad records ---

BAD_MESSAGES = [
    ("not json {", NOT_A_RECORD),
    (json.dumps(["a list"]), NOT_A_RECORD),
    (json.dumps({"conversations": []}), NOT_A_RECORD),
    (json.dumps({"messages": "Q"}), NOT_A_RECORD),
    (json.dumps({"messages": ["Q", "A"]}), NOT_A_RECORD),
    (line(("user", "Q"), ("assistant", None)), NOT_A_RECORD),
    (json.dumps({"messages": [{"content": "Q"}, {"role": "assistant", "content": "A"}]}), NOT_A_RECORD),
    (line(("user", "Q"), ("tool", "3"), ("assistant", "A")), UNKNOWN_ROLE),
    (line(("human", "Q"), ("gpt", "A")), UNKNOWN_ROLE),
    (json.dumps({"messages": []}), EMPTY_CONVERSATION),
    (line(("system", "Only a system prompt.")), EMPTY_CONVERSATION),
    (line(("user", "Q"), ("assistant", " \n")), EMPTY_MESSAGE),
    (line(("user", ""), ("assistant", "A")), EMPTY_MESSAGE),
    (line(("user", "Q"), ("system", "S"), ("assistant", "A")), SYSTEM_NOT_FIRST),
    (line(("system", "S1"), ("system", "S2"), ("user", "Q"), ("assistant", "A")), SYSTEM_NOT_FIRST),
    (line(("user", "Q1"), ("user", "Q2"), ("assistant", "A")), TWO_USER_TURNS),
    (line(("user", "Q"), ("assistant", "A1"), ("assistant", "A2")), TWO_ASSISTANT_TURNS),
    (line(("system", "S"), ("assistant", "A"), ("user", "Q"), ("assistant", "A2")), TWO_ASSISTANT_TURNS),
    (line(("user", "Q"), ("assistant", "A"), ("user", "Q2")), NO_FINAL_ANSWER),
    (line(("system", "S"), ("user", "Q")), NO_FINAL_ANSWER),
]


@pytest.mark.parametrize(("record", "reason"), BAD_MESSAGES)
def test_each_bad_messages_record_is_counted_under_its_reason(tmp_path, record, reason):
    good = json.dumps(messages(("user", "Q"), ("assistant", "A")))
    path = tmp_path / "chat.jsonl"
    path.write_text(f"{good}\n{record}\n{good}\n")
    conversations, stats = read(path, "messages")
    assert [conversation.position for conversation in conversations] == [1, 3]
    assert (stats.records_read, stats.bad, stats.first_bad) == (3, {reason: 1}, [f"line 2: {reason}"])


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}], UNKNOWN_ROLE),
        ([{"from": "human", "value": "Q"}, {"from": "gpt", "value": 3}], NOT_A_RECORD),
        ([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "system", "value": "S"}],
         SYSTEM_NOT_FIRST),
        ([{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
         TWO_ASSISTANT_TURNS),
    ],
)  # fmt: skip
def test_bad_sharegpt_records(tmp_path, turns, reason):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"conversations": turns}]))
    assert read(path, "sharegpt") == ([], ConversationStats(1, {reason: 1}, [f"record 1: {reason}"]))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"conversation": [{"human": "Q"}]}, NOT_A_RECORD),
        ({"conversation": [{"human": "Q", "assistant": "A"}], "system": 3}, NOT_A_RECORD),
        ({"conversation": [["Q", "A"]]}, NOT_A_RECORD),
        ({"conversation": []}, EMPTY_CONVERSATION),
        (
            {"conversation": [{"human": "Q", "assistant": "A"}, {"human": "Q2", "assistant": ""}]},
            EMPTY_MESSAGE,
        ),
    ],
)
def test_bad_moss_records(tmp_path, record, reason):
    path = write_jsonl(tmp_path / "moss.jsonl", [record])
    assert read(path, "moss") == ([], ConversationStats(1, {reason: 1}, [f"line 1: {reason}"]))


def test_a_record_breaking_two_rules_counts_only_the_first(tmp_path):
    # Checked in a fixed order: an unknown role before an empty message, an empty message before two
    # user turns, two user turns before two assistant turns, those before a missing final answer.
    records = [
        messages(("user", ""), ("tool", "x"), ("assistant", "A")),
        messages(("user", "Q1"), ("user", " "), ("assistant", "A")),
        messages(("user", "Q"), ("assistant", "A"), ("assistant", "A2"), ("user", "Q2"), ("user", "Q3")),
        messages(("system", "S"), ("assistant", "A")),
    ]
    _, stats = read(write_jsonl(tmp_path / "chat.jsonl", records), "messages")
    assert stats.bad == {UNKNOWN_ROLE: 1, EMPTY_MESSAGE: 1, TWO_USER_TURNS: 1, TWO_ASSISTANT_TURNS: 1}
    assert stats.first_bad == [
        f"line 1: {UNKNOWN_ROLE}",
        f"line 2: {EMPTY_MESSAGE}",
        f"line 3: {TWO_USER_TURNS}",
        f"line 4: {TWO_ASSISTANT_TURNS}",
    ]


def test_only_the_first_ten_bad_records_are_listed(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("{\n" * 12 + json.dumps({"messages": []}) + "\n")
    _, stats = read(path, "messages")
    assert stats.bad == {NOT_A_RECORD: 12, EMPTY_CONVERSATION: 1}
    assert stats.first_bad == [f"line {number}: {NOT_A_RECORD}" for number in range(1, 11)]


def test_unreadable_conversation_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="conversation file not found"):
        read(tmp_path / "nope.jsonl", "messages")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"messages": []},\n{]')
    with pytest.raises(UserError, match="broken.json: not valid JSON at line 2"):
        read(broken, "messages")


# --- plain text ---


def test_text_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(
        b"  First line, indented.\nsecond line\n"
        b"\n"
        b"Second document.\n"
        b"\n\n\n"
        b"Third, after three blank lines.\n"
        b"   \t\n"
        b"Fourth, after a whitespace-only line.\r\n"
        b"with a CRLF line end   \n"
        b"\n\n"
    )
    stats = TextStats()
    assert read_documents(path, stats) == [
        (1, "  First line, indented.\nsecond line"),
        (4, "Second document."),
        (8, "Third, after three blank lines."),
        (10, "Fourth, after a whitespace-only line.\nwith a CRLF line end   "),
    ]
    assert (stats.documents_read, stats.empty, stats.malformed) == (4, 0, 0)


def test_a_text_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("\ufeffCafé notes.\n\nSecond.".encode())
    assert read_documents(path, TextStats()) == [(1, "Café notes."), (3, "Second.")]


def test_undecodable_text_is_a_user_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("One.\n\nCafé au lait.\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"notes.txt: not valid UTF-8 at line 3"):
        read_documents(path, TextStats())
    with pytest.raises(UserError, match="text file not found"):
        read_documents(tmp_path / "missing.txt", TextStats())


def test_jsonl_documents_count_the_empty_and_malformed_records(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text(
        '{"text": "First.\\n\\nStill the first."}\n'
        '{"text": "  "}\n'
        "{broken\n"
        "\n"
        '{"body": "no text"}\n'
        '{"text": 5}\n'
        '{"text": " Kept as written. "}\n'
    )
    stats = TextStats()
    assert read_documents(path, stats) == [(1, "First.\n\nStill the first."), (7, " Kept as written. ")]
    assert (stats.documents_read, stats.empty, stats.malformed, stats.malformed_lines) == (6, 1, 3, [3, 5, 6])


def test_a_json_list_of_documents(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text(json.dumps([{"text": "A"}, {"text": ""}, "B", {"text": "C"}]))
    stats = TextStats()
    assert read_documents(path, stats) == [(1, "A"), (4, "C")]
    assert (stats.documents_read, stats.empty, stats.malformed_lines) == (4, 1, [3])


# --- the sample files ---


def answers(conversations: list[Conversation]) -> list[str]:
    return [answer for conversation in conversations for _, answer in conversation.turns]


def test_sample_messages_file():
    conversations, stats = read(SAMPLES / "conversations" / "messages.jsonl", "messages")
    assert (len(conversations), stats.records_read) == (24, 28)
    assert stats.bad == {UNKNOWN_ROLE: 1, TWO_ASSISTANT_TURNS: 1, EMPTY_CONVERSATION: 1, NO_FINAL_ANSWER: 1}
    assert stats.first_bad == [
        f"line 7: {UNKNOWN_ROLE}",
        f"line 14: {TWO_ASSISTANT_TURNS}",
        f"line 21: {EMPTY_CONVERSATION}",
        f"line 27: {NO_FINAL_ANSWER}",
    ]
    assert sum(conversation.system is not None for conversation in conversations) == 8
    assert {len(conversation.turns) for conversation in conversations} == {2, 3, 4}
    assert len(set(conversations)) == 24
    assert [sum(marker in answer for answer in answers(conversations)) for marker in SPECIAL_MARKERS] == [
        1,
        1,
    ]


def test_sample_sharegpt_file():
    conversations, stats = read(SAMPLES / "conversations" / "sharegpt.json", "sharegpt")
    assert (len(conversations), stats.records_read) == (12, 13)
    assert (stats.bad, stats.first_bad) == ({UNKNOWN_ROLE: 1}, [f"record 8: {UNKNOWN_ROLE}"])
    assert sum(conversation.system is not None for conversation in conversations) == 4
    assert {len(conversation.turns) for conversation in conversations} == {2, 3}


def test_sample_moss_file():
    conversations, stats = read(SAMPLES / "conversations" / "moss.jsonl", "moss")
    assert (len(conversations), stats.records_read) == (12, 13)
    assert (stats.bad, stats.first_bad) == ({EMPTY_MESSAGE: 1}, [f"line 10: {EMPTY_MESSAGE}"])
    assert sum(conversation.system is not None for conversation in conversations) == 2
    assert {len(conversation.turns) for conversation in conversations} == {2, 3, 4}


def test_sample_conversations_are_all_different_and_spell_the_markers_once():
    everything = [
        turns
        for name, format in [
            ("messages.jsonl", "messages"),
            ("sharegpt.json", "sharegpt"),
            ("moss.jsonl", "moss"),
        ]
        for turns in (
            conversation.turns for conversation in read(SAMPLES / "conversations" / name, format)[0]
        )
    ]
    assert len(everything) == len(set(everything)) == 48
    texts = [text for turns in everything for turn in turns for text in turn]
    assert [sum(marker in text for text in texts) for marker in SPECIAL_MARKERS] == [1, 1]


def test_sample_text_file():
    stats = TextStats()
    documents = read_documents(SAMPLES / "text" / "python_notes.txt", stats)
    texts = [text for _, text in documents]
    assert (len(documents), stats.documents_read, stats.empty, stats.malformed) == (40, 40, 0, 0)
    assert len(set(texts)) == 40
    assert documents[0][0] == 1
    words = sorted(len(text.split()) for text in texts)
    assert words[-4] < 100 and words[-3] >= 250 and words[-1] <= 400  # three long documents
    assert [sum(marker in text for text in texts) for marker in SPECIAL_MARKERS] == [1, 1]


def test_sample_jsonl_text_file():
    stats = TextStats()
    documents = read_documents(SAMPLES / "text" / "python_notes.jsonl", stats)
    assert (len(documents), stats.documents_read, stats.empty) == (10, 12, 1)
    assert (stats.malformed, stats.malformed_lines) == (1, [5])
    assert len({text for _, text in documents}) == 10
    assert not any(marker in text for _, text in documents for marker in SPECIAL_MARKERS)
