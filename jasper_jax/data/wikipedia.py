"""Plain-text paragraphs out of a MediaWiki XML dump (`enwiki-*-pages-articles*.xml[.bz2]`).

The corpus builder reads a dump as a source (`jasper_jax.data.corpus`), and the demo broadens its news-only
text with the shortened English Wikipedia dump inside the gensim wheel (`jasper_jax.assets.fetch_wikipedia`).
The dump is streamed (`xml.etree.ElementTree.iterparse` over bz2), so a full enwiki dump reads in constant
memory. Only articles are kept: namespace 0, no redirects. The markup is stripped by `strip_markup`, a small
regular-expression filter in the spirit of gensim's `filter_wiki` (templates, tables, references, files and
categories dropped; links and bold/italic reduced to their text; headings, lists and tables of contents left
out), good enough for training text, not a MediaWiki parser.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
REFERENCE = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
BLOCK_TAG = re.compile(
    r"<(math|gallery|timeline|source|syntaxhighlight|pre|code|score)[^>]*>.*?</\1>", re.DOTALL | re.IGNORECASE
)
TAG = re.compile(r"</?[a-zA-Z][^>]*>")
FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|Media|[a-z]{2,3}(?:-[a-z]+)?):", re.I)  # and its nested links
LINK_DELIMITER = re.compile(r"\[\[|\]\]")
LINK = re.compile(r"\[\[([^\[\]|]*)\|?([^\[\]]*)\]\]")
EXTERNAL_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]")
EMPHASIS = re.compile(r"'{2,}")
HEADING = re.compile(r"^=+.*=+\s*$")
SPACES = re.compile(r"[ \t]+")
EMPTY_PARENTHESES = re.compile(r"\(\s*(?:[,;:]\s*)*\)")  # what a removed template left: "(, )", "()"
LEADING_PUNCTUATION = re.compile(r"\(\s*[,;:]\s*")  # "(, "human")" -> "("human")"
SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:])")


def _drop_nested(text: str, opening: str, closing: str) -> str:
    """`text` without every (possibly nested) `opening ... closing` span, e.g. `{{ }}` templates, `{| |}` tables.
    Scans from delimiter to delimiter (a full dump is gigabytes: no per-character Python loop)."""
    out, depth, kept_from = [], 0, 0
    for match in re.finditer(re.escape(opening) + "|" + re.escape(closing), text):
        if match.group() == opening:
            if depth == 0:
                out.append(text[kept_from : match.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                kept_from = match.end()
    if depth == 0:
        out.append(text[kept_from:])
    return "".join(out)


def _drop_file_links(text: str) -> str:
    """`text` without `[[File:...]]`, `[[Image:...]]`, categories and interlanguage links, whose captions may
    hold links of their own (the span ends at its matching `]]`)."""
    out, index = [], 0
    while (match := FILE_LINK.search(text, index)) is not None:
        out.append(text[index : match.start()])
        depth, index = 1, len(text)  # unclosed: dropped to the end
        for delimiter in LINK_DELIMITER.finditer(text, match.end()):  # delimiter to delimiter, as _drop_nested
            depth += 1 if delimiter.group() == "[[" else -1
            if depth == 0:
                index = delimiter.end()
                break
    out.append(text[index:])
    return "".join(out)


def strip_markup(wikitext: str) -> str:
    """The prose of an article's wikitext: paragraphs separated by blank lines, markup removed."""
    text = COMMENT.sub("", wikitext)
    text = REFERENCE.sub("", text)
    text = BLOCK_TAG.sub("", text)
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    text = _drop_file_links(text)
    text = LINK.sub(lambda match: match.group(2) or match.group(1), text)
    text = EXTERNAL_LINK.sub(lambda match: match.group(1), text)
    text = EMPHASIS.sub("", text)
    text = TAG.sub("", html.unescape(text))
    text = html.unescape(text)  # dumps escape twice (&amp;nbsp;)
    lines = []
    for line in text.splitlines():
        line = SPACES.sub(" ", line.replace("\u00a0", " "))
        line = LEADING_PUNCTUATION.sub("(", EMPTY_PARENTHESES.sub("", line))
        line = SPACE_BEFORE_PUNCTUATION.sub(r"\1", line).strip()
        if HEADING.match(line) or line[:1] in ("*", "#", ":", ";", "|", "!"):
            line = ""  # headings, lists, indented and table lines are not prose
        lines.append(line)
    return "\n".join(lines)


def paragraphs(wikitext: str, min_words: int = 20) -> list[str]:
    """The article's prose paragraphs of at least `min_words` words (short lines are captions, stubs, leftovers)."""
    blocks = re.split(r"\n\s*\n|\n(?=\S)", strip_markup(wikitext))
    return [block.strip() for block in blocks if len(block.split()) >= min_words]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_articles(path: str | Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of every article of the dump (namespace 0, not a redirect), in the dump's order."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as handle:
        try:
            for _, element in ElementTree.iterparse(handle, events=("end",)):
                if _local(element.tag) != "page":
                    continue
                fields = {_local(child.tag): child for child in element}
                namespace = fields.get("ns")
                revision = fields.get("revision")
                if revision is not None and (namespace is None or namespace.text == "0") and "redirect" not in fields:
                    text = next((child.text for child in revision if _local(child.tag) == "text"), None)
                    if text and not text.lstrip().lower().startswith("#redirect"):
                        yield fields["title"].text or "", text
                element.clear()
        except (ElementTree.ParseError, OSError, EOFError) as error:  # OSError, EOFError: a broken bz2 stream
            raise ValueError(f"{path}: not a MediaWiki XML dump ({error})") from None


def article_paragraphs(path: str | Path, min_words: int = 20) -> Iterator[str]:
    """Every prose paragraph of every article, article by article (what a corpus source of a dump yields)."""
    for _, wikitext in read_articles(path):
        yield from paragraphs(wikitext, min_words)


def broad_paragraphs(path: str | Path, count: int, min_words: int = 20) -> list[str]:
    """`count` paragraphs spread over the articles: every article's first paragraph, then every second one,
    ... (a small sample then covers as many topics as the dump has, not its first few articles)."""
    by_article = [paragraphs(wikitext, min_words) for _, wikitext in read_articles(path)]
    chosen: list[str] = []
    for rank in range(max((len(p) for p in by_article), default=0)):
        for article in by_article:
            if rank < len(article):
                chosen.append(article[rank])
                if len(chosen) == count:
                    return chosen
    return chosen


def is_dump(path: str) -> bool:
    """Whether a corpus source path names a MediaWiki XML dump (`.xml` or `.xml.bz2`)."""
    return path.lower().endswith((".xml", ".xml.bz2"))
