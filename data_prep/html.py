"""Stack Overflow post HTML to Markdown, on lxml's parser: code blocks kept exactly, prose tidied."""

from __future__ import annotations

import re
from collections.abc import Iterator

from lxml import etree

BLOCK_TAGS = {"p", "div", "pre", "ul", "ol", "blockquote", "hr", "table", "h1", "h2", "h3", "h4", "h5", "h6"}
LINE_BREAK = "\ue000"  # stands for <br> while inline whitespace is collapsed
# Plain elements (no lxml.html element classes to look up): about twice as fast; comments dropped. No
# doctype to add, no `id` attributes to index: 5% less of the parse.
_PARSER = etree.HTMLParser(remove_comments=True, remove_pis=True, default_doctype=False, collect_ids=False)


def html_to_markdown(html: str) -> str:
    """Convert a post body. `<pre><code>` becomes a fenced block with its text exactly as written
    (entities decoded, indentation and blank lines kept); inline markup becomes its Markdown form."""
    if not html or html.isspace():
        return ""
    root = etree.fromstring(f"<div>{html}</div>", _PARSER)[0][0]  # html > body > div
    return "\n\n".join(_blocks(root)).strip()


def _blocks(element: etree._Element) -> list[str]:
    """The element's children as a list of Markdown blocks; runs of inline content form paragraphs."""
    blocks: list[str] = []
    text = element.text
    inline: list[str] = [text] if text and not text.isspace() else []
    for child in element:
        tag = child.tag
        if tag in BLOCK_TAGS:
            if inline:
                _add_paragraph(blocks, inline)
                inline = []
            blocks.extend(_block(child, tag))
        else:
            inline.append(_inline(child, tag))
        tail = child.tail
        # Whitespace that opens a paragraph is dropped with it (as between two blocks): not gathered
        if tail and (inline or not tail.isspace()):
            inline.append(tail)
    if inline:
        _add_paragraph(blocks, inline)
    return blocks


def _add_paragraph(blocks: list[str], inline: list[str]) -> None:
    text = _tidy_inline("".join(inline))
    if text:
        blocks.append(text)


def _block(element: etree._Element, tag: str) -> list[str]:
    if tag == "p" and not len(element):  # most blocks: a paragraph of plain text
        text = _tidy_inline(element.text or "")
        return [text] if text else []
    if tag == "pre":
        return [_fenced(_text(element))]
    if tag == "hr":
        return ["---"]
    if tag in {"h1", "h2", "h3", "h4", "h5", "h6"}:
        text = _tidy_inline(_inline_children(element))
        return ["#" * int(tag[1]) + " " + text] if text else []
    if tag in {"ul", "ol"}:
        return [_list(element)] if len(element) else []
    if tag == "blockquote":
        inner = "\n\n".join(_blocks(element))
        return ["\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))] if inner else []
    if tag == "table":
        return _table(element)
    return _blocks(element)


def _table(element: etree._Element) -> list[str]:
    """A GitHub Markdown table: a header row, the `---` separator, then the other rows. GitHub needs a
    header, so a table without `<th>` has its first row as one; short rows are padded with empty cells."""
    rows = [[_cell(cell) for cell in row.iterchildren("th", "td")] for row in _table_rows(element)]
    rows = [row for row in rows if row]
    if not rows:
        return []
    width = max(map(len, rows))
    lines = ["| " + " | ".join(row + [""] * (width - len(row))) + " |" for row in rows]
    lines.insert(1, "|" + " --- |" * width)
    return ["\n".join(lines)]


def _table_rows(table: etree._Element) -> Iterator[etree._Element]:
    for child in table:
        if child.tag == "tr":
            yield child
        elif child.tag in {"thead", "tbody", "tfoot"}:
            yield from child.iterchildren("tr")


def _cell(cell: etree._Element) -> str:
    """A cell's content on one line (a table row is one line): its lines joined by `<br>`, `|` escaped."""
    return "<br>".join("\n".join(_blocks(cell)).split("\n")).replace("|", "\\|")


def _list(element: etree._Element) -> str:
    items = []
    number = int(element.get("start", "1") or 1) if element.tag == "ol" else 0
    for item in element.iterchildren("li"):
        marker = f"{number}. " if element.tag == "ol" else "- "
        number += 1
        body = "\n\n".join(_blocks(item)) or ""
        indent = " " * len(marker)
        lines = body.split("\n")
        items.append(marker + lines[0] + "".join(f"\n{indent}{line}" if line else "\n" for line in lines[1:]))
    return "\n".join(items)


def _fenced(code: str) -> str:
    code = code.removesuffix("\n")
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0) if "`" in code else 0
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{code}\n{fence}"


def _inline(element: etree._Element, tag: str) -> str:
    if tag == "code":
        code = _text(element)
        if not code or code.isspace():
            return ""
        # Each whitespace run one space, the first and last kept (re.sub(r"\s+", " ", code), faster)
        inner = " ".join(code.split())
        code = f"{' ' if code[0].isspace() else ''}{inner}{' ' if code[-1].isspace() else ''}"
        return f"`` {code} ``" if "`" in code else f"`{code}`"
    if tag == "br":
        return LINE_BREAK
    if tag == "img":
        return element.get("alt") or ""
    if not isinstance(tag, str):  # comments and processing instructions
        return ""
    text = _inline_children(element)
    if tag in {"strong", "b"}:
        return f"**{text.strip()}**" if text.strip() else ""
    if tag in {"em", "i"}:
        return f"*{text.strip()}*" if text.strip() else ""
    if tag in {"s", "strike", "del"}:
        return f"~~{text.strip()}~~" if text.strip() else ""
    if tag in {"sup", "sub"}:  # kept as the inline HTML GitHub renders: x<sup>2</sup> must not read x2
        return f"<{tag}>{text.strip()}</{tag}>" if text.strip() else ""
    if tag == "a":
        href = element.get("href")
        label = _tidy_inline(text)
        return f"[{label or href}]({href})" if href else text
    return text


def _text(element: etree._Element) -> str:
    """All the text inside the element, as written (serialized by libxml2: twice as fast as itertext)."""
    if not len(element):
        return element.text or ""
    return etree.tostring(element, method="text", encoding="unicode", with_tail=False)


def _inline_children(element: etree._Element) -> str:
    if not len(element):
        return element.text or ""
    return (element.text or "") + "".join(_inline(child, child.tag) + (child.tail or "") for child in element)


def _tidy_inline(text: str) -> str:
    """Whitespace runs become one space (str.split: the whitespace of `\\s`, faster); `<br>` a newline."""
    if LINE_BREAK not in text:
        return " ".join(text.split())
    return "\n".join(" ".join(line.split()) for line in text.split(LINE_BREAK)).strip()
