"""MediaWiki dumps as training text: markup stripped, only articles read, paragraphs spread over articles,
a dump as a corpus source, and the offline kit's shortened English Wikipedia (what the demo trains on)."""

from __future__ import annotations

import bz2
import re

import pytest

from jasper_jax.data.corpus import CorpusConfig, SourceSpec, build_corpus
from jasper_jax.data.wikipedia import article_paragraphs, broad_paragraphs, paragraphs, read_articles, strip_markup

LONG = " ".join(f"word{i}" for i in range(25))  # a paragraph over the 20-word floor

WIKITEXT = f"""{{{{Infobox person|name=X|born={{{{birth date|1900|1|1}}}}}}}}
'''Ada''' was a [[mathematics|mathematician]] and [[writer]].<ref name="a">Some source, p. 3.</ref> She
lived in [[London]] (, "the city").<ref>Another.</ref> See [https://example.org the site] &amp; more.<!-- a comment -->
[[File:Ada.jpg|thumb|A portrait of [[Ada]] in 1840]]

== Early life ==
* a list item that is not prose
{{| class="wikitable"
|-
| a table cell
|}}
{LONG}
[[Category:Mathematicians]]
"""


def test_strip_markup_keeps_the_prose_and_drops_the_markup():
    text = strip_markup(WIKITEXT)
    assert "Ada was a mathematician and writer. She" in text
    assert 'lived in London ("the city"). See the site & more.' in text
    for gone in (
        "Infobox",
        "birth date",
        "Some source",
        "Another",
        "comment",
        "portrait",
        "Early life",
        "list item",
        "table cell",
        "Category",
        "'''",
        "[[",
        "{{",
        "<ref",
    ):
        assert gone not in text, gone
    assert LONG in text


def test_paragraphs_are_the_blocks_of_at_least_min_words():
    found = paragraphs(WIKITEXT, min_words=20)
    assert found == [LONG]
    assert any(p.startswith("Ada was a mathematician") for p in paragraphs(WIKITEXT, min_words=5))


def write_dump(path, pages) -> str:
    """A bz2 MediaWiki export of (title, namespace, text, redirect) pages."""
    body = []
    for title, namespace, text, redirect in pages:
        redirect_tag = f'<redirect title="{redirect}" />' if redirect else ""
        body.append(
            f"<page><title>{title}</title><ns>{namespace}</ns><id>1</id>{redirect_tag}"
            f'<revision><id>2</id><text xml:space="preserve">{text}</text></revision></page>'
        )
    header = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">'
    xml = header + "".join(body) + "</mediawiki>"
    path.write_bytes(bz2.compress(xml.encode("utf-8")))
    return str(path)


def article_text(name: str, count: int) -> str:
    return "\n\n".join(f"{name} paragraph {k} " + LONG for k in range(count))


def test_only_articles_are_read_and_paragraphs_spread_over_them(tmp_path):
    dump = write_dump(
        tmp_path / "wiki.xml.bz2",
        [
            ("Alpha", 0, article_text("alpha", 3), None),
            ("Redirected", 0, "#REDIRECT [[Alpha]]", "Alpha"),
            ("Old redirect", 0, "#redirect [[Alpha]]", None),
            ("Wikipedia:Policy", 4, article_text("policy", 2), None),
            ("Beta", 0, article_text("beta", 1), None),
        ],
    )
    assert [title for title, _ in read_articles(dump)] == ["Alpha", "Beta"]
    assert [" ".join(p.split()[:3]) for p in article_paragraphs(dump)] == [
        "alpha paragraph 0",
        "alpha paragraph 1",
        "alpha paragraph 2",
        "beta paragraph 0",
    ]
    # first paragraph of every article, then the second ones, ...
    assert [p.split()[0] + p.split()[2] for p in broad_paragraphs(dump, 3)] == ["alpha0", "beta0", "alpha1"]
    assert len(broad_paragraphs(dump, 100)) == 4  # every paragraph, when fewer than asked


def test_a_dump_is_a_corpus_source(tmp_path):
    dump = write_dump(tmp_path / "wiki.xml.bz2", [("Alpha", 0, article_text("alpha", 4), None)])
    config = CorpusConfig(chunk_fraction=0.0, shuffle_words_fraction=0.0)
    rows, summary = build_corpus([SourceSpec(dump, name="wiki")], config)
    assert [text for text, _ in rows] == [f"alpha paragraph {k} " + LONG for k in range(4)]
    assert summary["per_source"]["wiki"]["texts"] == 4


def test_a_file_that_is_not_a_dump_is_named(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<mediawiki><page><title>x</title>")
    with pytest.raises(ValueError, match="broken.xml: not a MediaWiki XML dump"):
        list(read_articles(bad))
    not_bz2 = tmp_path / "plain.xml.bz2"
    not_bz2.write_text("<mediawiki></mediawiki>")
    with pytest.raises(ValueError, match="plain.xml.bz2: not a MediaWiki XML dump"):
        list(read_articles(not_bz2))


def test_the_kit_dump_gives_broad_clean_prose():
    """The shortened enwiki of the gensim wheel: 106 articles; the demo's 720 paragraphs cover all of them,
    are distinct, and hold no markup left over."""
    from jasper_jax.assets import fetch_wikipedia

    dump = fetch_wikipedia()
    articles = list(read_articles(dump))
    assert len(articles) >= 100
    chosen = broad_paragraphs(dump, 720)
    assert len(chosen) == len(set(chosen)) == 720
    first_paragraphs = {paragraphs(text)[0] for _, text in articles if paragraphs(text)}
    assert first_paragraphs <= set(chosen)  # every article with prose gives its first paragraph
    markup = re.compile(r"\[\[|\]\]|\{\{|\}\}|<ref|'''|&amp;|&nbsp;|^=+")
    assert [p for p in chosen if markup.search(p)] == []
    assert min(len(p.split()) for p in chosen) >= 20
