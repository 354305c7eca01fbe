"""A synthetic dump in the Kaggle "Python Questions from Stack Overflow" schema, of any size.

Questions.csv, Answers.csv and Tags.csv with the real columns, quoting and `NA`s, written
deterministically from a seed. Bodies are Stack Overflow-style HTML (paragraphs with inline code, links
and emphasis; `<pre><code>` blocks with indentation, blank lines and escaped `<` `>` `&`; lists, block
quotes, headings, images, `<br>`, `<hr>`), with log-normal lengths and a long tail; some text is not
ASCII; scores are signed with a long tail and ties; a few questions are exact duplicates, some have no
answer, and a few answers have no question. The default is the real dump's size (607,282 questions,
987,122 answers, about 1.9 M tag rows, about 2 GB).

    python -m synthetic.stackoverflow --out runs/bench/so-full
    python -m synthetic.stackoverflow --out runs/bench/so-100k --questions 100000 --answers 162500
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

FULL_QUESTIONS = 607_282
FULL_ANSWERS = 987_122
QUESTION_HEADER = ["Id", "OwnerUserId", "CreationDate", "Score", "Title", "Body"]
ANSWER_HEADER = ["Id", "OwnerUserId", "CreationDate", "ParentId", "Score", "Body"]

WORDS = [
    "the", "a", "an", "this", "that", "it", "is", "are", "was", "be", "have", "has", "do", "does", "not",
    "can", "cannot", "will", "would", "should", "must", "I", "you", "we", "my", "your", "when", "if",
    "then", "else", "but", "so", "because", "however", "also", "only", "just", "still", "already", "again",
    "instead", "here", "there", "how", "what", "why", "which", "where", "value", "values", "list", "lists",
    "dict", "dictionary", "key", "keys", "string", "strings", "file", "files", "line", "lines", "function",
    "functions", "method", "methods", "class", "object", "objects", "instance", "module", "package",
    "import", "error", "exception", "traceback", "loop", "iterate", "iteration", "index", "element",
    "elements", "array", "dataframe", "column", "columns", "row", "rows", "result", "output", "input",
    "variable", "variables", "argument", "arguments", "return", "returns", "call", "calls", "called",
    "script", "program", "code", "example", "works", "working", "fails", "failing", "expected", "actual",
    "problem", "way", "simple", "simply", "better", "faster", "memory", "time", "data", "type", "types",
    "integer", "float", "number", "numbers", "name", "names", "path", "directory", "read", "write", "open",
    "close", "parse", "convert", "sort", "sorted", "filter", "map", "reduce", "count", "unique", "regex",
    "pattern", "match", "matches", "group", "request", "response", "server", "client", "thread", "process",
    "queue", "socket", "json", "csv", "xml", "html", "database", "query", "table", "field", "model", "view",
    "template", "form", "test", "tests", "library", "version", "python", "django", "flask", "pandas",
    "numpy", "matplotlib", "virtualenv", "pip", "install", "installed", "run", "running", "get", "set",
    "use", "using", "need", "want", "try", "tried", "trying", "seems", "seem", "wrong", "right", "first",
    "last", "next", "previous", "each", "every", "all", "some", "none",
]  # fmt: skip
NON_ASCII = ["café", "naïve", "“quoted”", "→", "咖啡", "Ünïcödé", "£5", "déjà vu", "🙂", "Москва", "…"]
IDENTIFIERS = [
    "x",
    "y",
    "i",
    "n",
    "df",
    "data",
    "items",
    "result",
    "value",
    "my_list",
    "counts",
    "row",
    "obj",
]
CALLS = [
    "len(x)", "sorted(items, key=len)", "df.groupby('a').sum()", "os.path.join(a, b)", "json.loads(s)",
    "re.sub(r'\\s+', ' ', s)", "dict(zip(keys, values))", "list(map(int, line.split()))", "np.zeros((3, 3))",
    "open(path, 'rb')", "subprocess.run(cmd, check=True)", "super().__init__()", "x if x &lt; y else y",
]  # fmt: skip
TAGS = [
    ("python-2.7", 12), ("python-3.x", 10), ("django", 9), ("pandas", 7), ("numpy", 6), ("list", 5),
    ("dictionary", 4), ("regex", 4), ("matplotlib", 4), ("flask", 3), ("string", 3), ("tkinter", 2),
    ("csv", 2), ("json", 2), ("scipy", 2), ("sqlalchemy", 2), ("multithreading", 1), ("unicode", 1),
    ("beautifulsoup", 1), ("selenium", 1), ("class", 1), ("loops", 1), ("datetime", 1), ("sockets", 1),
]  # fmt: skip
TITLE_TEMPLATES = [
    "How do I {verb} a {noun} in Python?", "Python: {verb} {noun} by {other}", "Why does {call} fail?",
    "{noun} &amp; {other}: how to {verb} both?", "Fastest way to {verb} a {noun} of {other}s",
    "How to {verb} &quot;{noun}&quot; without a loop", "What&#39;s the difference of {noun} and {other}?",
    "Error when I {verb} {noun}: {error}", "{verb} {noun} where value &lt; {number}",
]  # fmt: skip
ERRORS = ["TypeError", "ValueError", "KeyError", "IndexError", "UnicodeDecodeError", "AttributeError"]
# Python lines by kind: a line ending in ":" opens a block, so indentation follows the structure.
CODE_LINES = [
    "import {module}", "from {module} import {name}", "def {name}({ident}, {other}):", "{ident} = {call}",
    "if {ident} &lt; {number} and {other} &gt; 0:", "return {ident}", "for {ident} in {other}:",
    "print({ident})", "{other}.append({ident})", "# {comment}", "{ident} = [{number}, {number}, {number}]",
    "print(&quot;{comment}&quot;)", "class {Name}(object):", "def __init__(self, {ident}):",
    "self.{ident} = {ident}", "with open('{name}.txt') as f:", "data = f.read() &amp; mask",
    "{ident} = {{'a': {number}, 'b': [{number}]}}", "try:", "except {error} as e:", "else:", "while {ident}:",
]  # fmt: skip
OUTPUT_LINES = [
    "&gt;&gt;&gt; {call}", "{number}", "Traceback (most recent call last):",
    '  File "{name}.py", line {number}, in &lt;module&gt;', "    {call}", "{error}: {comment}",
]  # fmt: skip
MODULES = ["os", "re", "sys", "json", "csv", "collections", "itertools", "numpy as np", "pandas as pd"]


class Writer:
    """Text fragments drawn from one seeded generator: pools of sentences and code blocks, then posts."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sentences = [self.sentence() for _ in range(4000)]
        self.code_blocks = [self.code_block() for _ in range(3000)]

    def fill(self, template: str) -> str:
        rng = self.rng
        ident, other = rng.sample(IDENTIFIERS, 2)
        name = rng.choice(WORDS) + "_" + rng.choice(WORDS)
        return template.format(
            ident=ident, other=other, name=name, Name=name.title().replace("_", ""),
            number=rng.randint(0, 99), module=rng.choice(MODULES), call=rng.choice(CALLS),
            error=rng.choice(ERRORS),
            comment=" ".join(rng.choices(WORDS, k=rng.randint(2, 7))), verb=rng.choice(WORDS),
            noun=rng.choice(WORDS),
        )  # fmt: skip

    def code_block(self) -> str:
        """Code with indentation that follows its blocks and a few blank lines; sometimes a traceback."""
        rng = self.rng
        count = min(60, max(1, int(rng.lognormvariate(1.8, 0.7))))
        if rng.random() < 0.15:
            return "\n".join(self.fill(rng.choice(OUTPUT_LINES)) for _ in range(count))
        lines, indent = [], 0
        for _ in range(count):
            line = self.fill(rng.choice(CODE_LINES))
            lines.append(" " * indent + line)
            if line.endswith(":"):
                indent += 4
            elif indent and rng.random() < 0.3:
                indent -= 4
                if rng.random() < 0.3:
                    lines.append("")
        return "\n".join(lines)

    def sentence(self) -> str:
        rng = self.rng
        words = rng.choices(WORDS, k=rng.randint(5, 22))
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            words[rng.randrange(len(words))] = f"<code>{rng.choice(IDENTIFIERS + CALLS)}</code>"
        if rng.random() < 0.08:
            module = rng.choice(MODULES).split()[0]
            words[rng.randrange(len(words))] = (
                f'<a href="https://docs.python.org/3/library/{module}.html">docs</a>'
            )
        if rng.random() < 0.08:
            tag = rng.choice(("strong", "em"))
            words[rng.randrange(len(words))] = f"<{tag}>{rng.choice(WORDS)}</{tag}>"
        if rng.random() < 0.04:
            words[rng.randrange(len(words))] = rng.choice(NON_ASCII)
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice(".....?!:")

    def paragraph(self) -> str:
        return "<p>" + " ".join(self.rng.choices(self.sentences, k=self.rng.randint(1, 4))) + "</p>"

    def block(self) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.55:
            return self.paragraph()
        if kind < 0.88:
            return "<pre><code>" + rng.choice(self.code_blocks) + "\n</code></pre>"
        if kind < 0.93:
            tag = rng.choice(("ul", "ol"))
            items = "".join(f"<li>{rng.choice(self.sentences)}</li>\n" for _ in range(rng.randint(2, 5)))
            return f"<{tag}>\n{items}</{tag}>"
        if kind < 0.96:
            return f"<blockquote>\n  {self.paragraph()}\n</blockquote>"
        if kind < 0.975:
            level = rng.randint(1, 3)
            return f"<h{level}>{rng.choice(self.sentences)}</h{level}>"
        if kind < 0.985:
            return "<hr>"
        if kind < 0.993:
            return f'<p><img src="https://i.stack.imgur.com/{rng.randrange(10**6)}.png" alt="screenshot"></p>'
        return f"<p>{rng.choice(self.sentences)}<br>\n{rng.choice(self.sentences)}</p>"

    def body(self, scale: float) -> str:
        """A post of about `scale` blocks (log-normal: most are short, a few are very long)."""
        blocks = min(80, max(1, round(self.rng.lognormvariate(math.log(scale), 0.75))))
        return "\n\n".join(self.block() for _ in range(blocks)) + "\n"

    def title(self) -> str:
        text = self.fill(self.rng.choice(TITLE_TEMPLATES))
        return text if self.rng.random() > 0.03 else f"{text} ({self.rng.choice(NON_ASCII)})"


def write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _signed_score(rng: random.Random, negative: float) -> int:
    if rng.random() < negative:
        return -rng.randint(1, 5)
    return int(rng.paretovariate(1.3)) - 1 + (rng.random() < 0.3)


def _owner(rng: random.Random) -> str:
    return "NA" if rng.random() < 0.04 else str(rng.randint(1, 7_000_000))


def write_dump(
    folder: Path,
    questions: int = FULL_QUESTIONS,
    answers: int = FULL_ANSWERS,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Path]:
    """Write Questions.csv, Answers.csv and Tags.csv into `folder`; the same arguments give the same bytes."""
    rng = random.Random(seed)
    text = Writer(random.Random(seed + 1))
    folder.mkdir(parents=True, exist_ok=True)

    # Post ids grow with time and are shared by questions and answers, as on Stack Overflow.
    question_ids, post_id = [], 468
    for _ in range(questions):
        post_id += 2 * rng.randint(1, 60)
        question_ids.append(post_id)
    # About 90% of questions get an answer; the other answers go to popular questions.
    answered = rng.sample(question_ids, min(answers, int(questions * 0.9)))
    weights = [rng.paretovariate(1.5) for _ in answered]
    parents = answered + rng.choices(answered, weights=weights, k=answers - len(answered))
    orphans = max(1, answers // 2000)
    parents[-orphans:] = [post_id + 2 * (i + 1) for i in range(orphans)]  # questions not in the dump
    answer_ids, answer_parents, previous = [], [], 0
    for key, parent in sorted((parent + 2 * int(rng.expovariate(1 / 300)), parent) for parent in parents):
        previous = max(previous + 2, key + 1)  # odd: never a question id, always after its question
        answer_ids.append(previous)
        answer_parents.append(parent)

    start = datetime(2008, 8, 1, tzinfo=UTC)
    seconds_per_id = (datetime(2016, 10, 19, tzinfo=UTC) - start).total_seconds() / max(previous, post_id)

    def date(ident: int) -> str:
        return (start + timedelta(seconds=ident * seconds_per_id)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def question_rows():
        earlier: list[tuple[str, str]] = []
        for index, question_id in enumerate(question_ids):
            if earlier and rng.random() < 0.003:
                title, body = rng.choice(earlier)  # an exact duplicate, posted again
            else:
                title, body = text.title(), text.body(3.4)
                if len(earlier) < 5000:
                    earlier.append((title, body))
            yield question_id, _owner(rng), date(question_id), _signed_score(rng, 0.09), title, body
            if index % 100_000 == 0:
                progress(f"Questions.csv: {index:,} of {questions:,}")

    def answer_rows():
        for index, (answer_id, parent) in enumerate(zip(answer_ids, answer_parents, strict=True)):
            body = text.body(3.0) if rng.random() > 0.002 else "<p></p>\n"  # a few convert to nothing
            yield answer_id, _owner(rng), date(answer_id), parent, _signed_score(rng, 0.06), body
            if index % 100_000 == 0:
                progress(f"Answers.csv: {index:,} of {answers:,}")

    def tag_rows():
        names, tag_weights = zip(*TAGS, strict=True)
        for question_id in question_ids:
            yield question_id, "python"
            extra = rng.choices(names, weights=tag_weights, k=rng.choice((0, 1, 1, 2, 2, 3, 4)))
            for tag in sorted(set(extra)):
                yield question_id, tag

    paths = {name: folder / f"{name}.csv" for name in ("Questions", "Answers", "Tags")}
    write_csv(paths["Questions"], QUESTION_HEADER, question_rows())
    write_csv(paths["Answers"], ANSWER_HEADER, answer_rows())
    write_csv(paths["Tags"], ["Id", "Tag"], tag_rows())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for Questions.csv, Answers.csv, Tags.csv"
    )
    parser.add_argument("--questions", type=int, default=FULL_QUESTIONS)
    parser.add_argument(
        "--answers", type=int, default=None, help="default: 1.625 per question, as the real dump"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    answers = (
        args.answers if args.answers is not None else round(args.questions * FULL_ANSWERS / FULL_QUESTIONS)
    )
    paths = write_dump(args.out, args.questions, answers, args.seed, progress=print)
    for path in paths.values():
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
