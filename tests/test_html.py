"""HTML to Markdown, one rule per test."""

from data_prep.html import html_to_markdown as md


def test_code_block_keeps_indentation_blank_lines_and_decodes_entities():
    html = (
        "<pre><code>def f(a, b):\n    if a &lt; b &amp;&amp; b &gt; 0:\n\n\n        return &quot;x&quot;\n"
        "</code></pre>\n"
    )
    assert md(html) == '```\ndef f(a, b):\n    if a < b && b > 0:\n\n\n        return "x"\n```'


def test_code_block_containing_backticks_gets_a_longer_fence():
    assert md("<pre><code>s = '```'\n</code></pre>") == "````\ns = '```'\n````"


def test_inline_code_and_emphasis():
    assert md("<p>Use <code>x &lt; y</code>, <strong>not</strong> <em>this</em>.</p>") == (
        "Use `x < y`, **not** *this*."
    )


def test_inline_code_with_a_backtick():
    assert md("<p><code>a`b</code></p>") == "`` a`b ``"


def test_links():
    assert md('<p>See <a href="https://docs.python.org">the docs</a>.</p>') == (
        "See [the docs](https://docs.python.org)."
    )


def test_unordered_and_ordered_lists():
    assert md("<ul>\n<li>one</li>\n<li>two <code>x</code></li>\n</ul>") == "- one\n- two `x`"
    assert md("<ol><li>first</li><li>second</li></ol>") == "1. first\n2. second"


def test_list_item_with_a_code_block_is_indented_under_its_marker():
    assert md("<ul><li><p>run</p><pre><code>pip install x\n</code></pre></li></ul>") == (
        "- run\n\n  ```\n  pip install x\n  ```"
    )


def test_block_quote():
    assert md("<blockquote>\n<p>first</p>\n<p>second</p>\n</blockquote>") == "> first\n>\n> second"


def test_headings():
    assert md("<h1>Top</h1><h2>Sub</h2><h3>Third</h3>") == "# Top\n\n## Sub\n\n### Third"


def test_line_break_and_rule():
    assert md("<p>line one<br>line two</p><hr><p>after</p>") == "line one\nline two\n\n---\n\nafter"


def test_image_becomes_its_alt_text():
    assert md('<p><img src="https://i.stack.imgur.com/x.png" alt="a plot"></p>') == "a plot"


def test_paragraph_whitespace_is_collapsed_and_entities_decoded():
    assert md("<p>one\n   two &amp; three&nbsp;four</p>\n\n<p>five</p>\n") == "one two & three four\n\nfive"


def test_empty_body():
    assert md("") == ""
    assert md("  \n") == ""


def test_table_with_a_header_row_becomes_a_github_table_with_pipes_escaped():
    html = (
        "<table><thead><tr><th>name</th><th>a|b</th></tr></thead>"
        "<tbody><tr><td>x</td><td><code>x | y</code></td></tr><tr><td>short</td></tr></tbody></table>"
    )
    assert md(html) == "| name | a\\|b |\n| --- | --- |\n| x | `x \\| y` |\n| short |  |"


def test_table_without_th_has_its_first_row_as_header_and_cells_stay_on_one_line():
    html = "<p>See:</p><table><tr><td>1</td><td>2</td></tr>"
    html += "<tr><td><p>one</p><p>two</p></td><td>4</td></tr></table>"
    assert md(html) == "See:\n\n| 1 | 2 |\n| --- | --- |\n| one<br>two | 4 |"


def test_empty_table_is_nothing():
    assert md("<p>a</p><table></table>") == "a"


def test_strike_through_keeps_its_meaning():
    assert md("<p><strike>old</strike>, <del> gone </del> and <s>wrong</s> <del> </del>now</p>") == (
        "~~old~~, ~~gone~~ and ~~wrong~~ now"
    )


def test_superscript_and_subscript_stay_inline_html():
    assert md("<p>x<sup>2</sup> + H<sub>2</sub>O, e<sup><em>i</em>π</sup></p>") == (
        "x<sup>2</sup> + H<sub>2</sub>O, e<sup>*i*π</sup>"
    )
