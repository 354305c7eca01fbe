"""The embedded base's corpus: the language reference's examples as Markdown code blocks, no codec tables,
held-out texts kept apart."""

from __future__ import annotations

from fine_tune.base import HELD_OUT_EVERY, fenced_examples, split_texts, stdlib_corpus

REFERENCE_PAGE = """The "for" statement
*******************

This overwrites all previous assignments:

   for i in range(10):
       print(i)

   i = 5

The grammar:

   for_stmt ::= "for" target_list "in" starred_list ":" suite

A paragraph ends: with no example
after it."""


def test_examples_become_fenced_blocks_tagged_python_when_they_parse():
    assert (
        fenced_examples(REFERENCE_PAGE)
        == """The "for" statement
*******************

This overwrites all previous assignments:

```python
for i in range(10):
    print(i)

i = 5
```

The grammar:

```
for_stmt ::= "for" target_list "in" starred_list ":" suite
```

A paragraph ends: with no example
after it."""
    )


def test_text_without_examples_is_unchanged():
    for text in [
        "",
        "one line:",
        "Indented text that opens no example:\n   but follows at once",
        "a:\n\n",
        "a:\n\n   \n",
    ]:
        assert fenced_examples(text) == text


def test_corpus_has_the_reference_fenced_and_no_codec_tables():
    corpus = stdlib_corpus(4.0)  # the tiny profile's size: sorted paths reach encodings/ at about 2.5 MB
    assert sum(text.count("```python\n") for text in corpus) > 20
    assert not any("Python Character Mapping Codec" in text for text in corpus)
    training, held_out = split_texts(corpus)
    assert held_out == corpus[::HELD_OUT_EVERY]
    assert len(training) + len(held_out) == len(corpus) and not set(training) & set(held_out)
