"""Build the offline training and evaluation corpus from documentation and dictionaries
installed as Debian packages (see docs/data.md).

HTML manuals (Python 3.11, PostgreSQL 15, Debian Reference) become documents made of
sections (heading level, title, text); the dictd dictionaries (GCIDE, WordNet) become
headword/definition entries. Every document and headword lands in the train or the
held-out split by a hash of its identity, so reruns give the same split.

Writes ``<out>/docs.jsonl``, ``<out>/dict.jsonl`` and ``<out>/stats.json``.

    python scripts/build_corpus.py --out .data/corpus
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
POSTGRES_DOCS = Path("/usr/share/doc/postgresql-doc-15/html")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference")
DICTD = Path("/usr/share/dictd")
HELDOUT_PERCENT = 10

BLOCK_TAGS = {
    "p", "div", "pre", "li", "dt", "dd", "tr", "table", "ul", "ol", "dl", "blockquote",
    "section", "br", "hr", "figure", "caption", "h1", "h2", "h3", "h4", "h5", "h6",
}
VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base"}
SKIP_TAGS = {"script", "style", "head", "title"}
SKIP_CLASSES = {
    "headerlink", "navheader", "navfooter", "toc", "list-of-tables", "list-of-figures",
    "list-of-examples", "sphinxsidebar", "related", "footer", "section-number",
}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
NUMBER_PREFIX = re.compile(
    r"^(?:(?:Chapter|Appendix|Part)\s+)?(?:\d+|[A-Z]|[IVXL]+)(?:\.\d+)*\.\s+")


def split_of(key: str) -> str:
    """'heldout' for HELDOUT_PERCENT % of keys (by SHA-1), else 'train'."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def clean_title(title: str) -> str:
    title = re.sub(r"\s+", " ", title.replace("¶", "")).strip()
    return NUMBER_PREFIX.sub("", title).strip()


def clean_text(text: str) -> str:
    """Strip each line, drop runs of blank lines, keep paragraph breaks."""
    lines = [line.rstrip() for line in text.replace("\u00a0", " ").split("\n")]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return out.replace("¶", "")


class SectionParser(HTMLParser):
    """HTML -> sections ``{"level", "title", "text"}`` in document order.

    Text is captured below the first element for which ``is_root(tag, attrs)`` holds;
    navigation, tables of contents, scripts and permalinks are skipped; whitespace is
    collapsed except inside ``<pre>``.
    """

    def __init__(self, is_root: Callable[[str, dict[str, str]], bool]) -> None:
        super().__init__(convert_charrefs=True)
        self.is_root = is_root
        self.stack: list[tuple[str, bool]] = []  # (tag, opened a skipped/root region)
        self.root_depth: int | None = None
        self.skip_depth = 0
        self.pre_depth = 0
        self.heading: tuple[int, list[str]] | None = None
        self.sections: list[dict] = [{"level": 0, "title": "", "parts": []}]

    def _emit(self, text: str) -> None:
        if self.heading is not None:
            self.heading[1].append(text)
        else:
            self.sections[-1]["parts"].append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag in VOID_TAGS:
            if tag in ("br", "hr") and self._capturing():
                self._emit("\n")
            return
        classes = set(attr.get("class", "").split())
        skipping = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES)
        self.stack.append((tag, skipping))
        if skipping:
            self.skip_depth += 1
        if self.root_depth is None and self.is_root(tag, attr):
            self.root_depth = len(self.stack)
        if not self._capturing():
            return
        if tag == "pre":
            self.pre_depth += 1
        if tag in HEADINGS:
            self.heading = (HEADINGS[tag], [])
        elif tag in BLOCK_TAGS:
            self._emit("\n")
        elif tag in ("td", "th"):
            self._emit(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr") and self._capturing():
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or not any(t == tag for t, _ in self.stack):
            return
        while self.stack:
            capturing = self._capturing()
            open_tag, skipping = self.stack.pop()
            if capturing and open_tag == "pre":
                self.pre_depth -= 1
            if capturing and open_tag in HEADINGS and self.heading is not None:
                level, parts = self.heading
                self.heading = None
                self.sections.append({"level": level, "title": clean_title("".join(parts)),
                                      "parts": []})
            elif capturing and open_tag in BLOCK_TAGS:
                self._emit("\n")
            if skipping:
                self.skip_depth -= 1
            if self.root_depth is not None and len(self.stack) < self.root_depth:
                self.root_depth = -1  # the root closed: capture nothing more
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._capturing():
            return
        self._emit(data if self.pre_depth else re.sub(r"\s+", " ", data))

    def _capturing(self) -> bool:
        return bool(self.root_depth) and self.root_depth > 0 and self.skip_depth == 0

    def result(self) -> list[dict]:
        out = []
        for s in self.sections:
            text = clean_text("".join(s["parts"]))
            if s["title"] or text:
                out.append({"level": s["level"], "title": s["title"], "text": text})
        return out


def parse_html(path: Path, is_root: Callable[[str, dict[str, str]], bool]) -> list[dict]:
    parser = SectionParser(is_root)
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.result()


def sphinx_root(tag: str, attrs: dict[str, str]) -> bool:
    return attrs.get("role") == "main"


def body_root(tag: str, attrs: dict[str, str]) -> bool:
    return tag == "body"


def python_docs(root: Path) -> Iterator[dict]:
    skip = re.compile(r"^(genindex|py-modindex|search|contents|download|bugs|copyright|"
                      r"license|about|index)\b")
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("_") or skip.match(rel):
            continue
        yield make_doc("python", rel, parse_html(path, sphinx_root))


def postgres_docs(root: Path) -> Iterator[dict]:
    for path in sorted(root.glob("*.html")):
        if path.name in ("bookindex.html", "index.html"):
            continue
        yield make_doc("postgresql", path.name, parse_html(path, body_root))


def debian_reference(root: Path) -> Iterator[dict]:
    """One document per top-level section (h2) of each chapter: the chapters are few."""
    for path in sorted(root.glob("*.en.html")):
        if path.name.startswith("index"):
            continue
        sections = parse_html(path, body_root)
        groups: list[list[dict]] = []
        for s in sections:
            if s["level"] == 2 or not groups:
                groups.append([])
            groups[-1].append(s)
        for group in groups:
            name = f"{path.name}#{group[0]['title']}"
            yield make_doc("debian-reference", name, group)


def make_doc(source: str, path: str, sections: list[dict]) -> dict:
    title = next((s["title"] for s in sections if s["title"]), path)
    key = f"{source}:{path}"
    return {"id": key, "source": source, "title": title, "split": split_of(key),
            "sections": sections}


# ------------------------------------------------------------------ dictionaries
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64_number(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + B64.index(ch)
    return value


def dictd_entries(name: str) -> Iterator[tuple[str, str]]:
    """(headword, raw entry text) of a dictd dictionary; entries shared by several
    headwords are yielded once, under the first."""
    with gzip.open(DICTD / f"{name}.dict.dz") as f:
        data = f.read()
    seen: set[tuple[int, int]] = set()
    for line in (DICTD / f"{name}.index").read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")
        span = (b64_number(offset), b64_number(length))
        if headword.startswith("00-database") or headword.startswith("00database") \
                or span in seen:
            continue
        seen.add(span)
        yield headword, data[span[0]:span[0] + span[1]].decode("utf-8", errors="replace")


GCIDE_CODES = re.compile(r"\[([a-z]{1,2})[\^=\"`~.*?,:;\-]?\]|\[[\^=\"`~.*?,:;\-]([a-z])\]")
GCIDE_SOURCE = re.compile(r"\[(?:1913 Webster|Webster 1913[^\]]*|PJC|WordNet[^\]]*|Century"
                          r" Dict\.|Chambers[^\]]*|[A-Z][A-Za-z. ]{0,30} \d{4})\]")


def clean_gcide(headword: str, raw: str) -> tuple[str, str]:
    """(full cleaned entry, senses only) of a GCIDE entry, headword line removed."""
    body = raw.split("\n", 1)[1] if "\n" in raw else ""
    first = raw.split("\n", 1)[0]
    # Part of speech and etymology may start on the headword line.
    first = re.sub(r"^.*?\\[^\\]*\\(\s*\([^)]*\))?,?\s*", "", first)
    text = first + "\n" + body
    text = GCIDE_SOURCE.sub("", text)
    text = re.sub(r"\[(?:[^\[\]]|\[[^\]]*\])*\]", lambda m: "" if len(m.group()) > 6
                  else m.group(), text, count=1)  # the etymology: first long bracket
    text = GCIDE_CODES.sub(lambda m: m.group(1) or m.group(2), text)
    text = re.sub(r"[{}]", "", text)
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    senses = [p for p in paragraphs if not re.match(r"^(Note:|Syn[.:]|--|[A-Z][\w' -]*, )", p)
              and not p.startswith(headword)]
    return "\n".join(paragraphs), " ".join(senses)


def clean_wordnet(headword: str, raw: str) -> tuple[str, str]:
    """(full cleaned entry, senses without synonym lists) of a WordNet entry."""
    body = raw.split("\n", 1)[1] if "\n" in raw else ""
    text = re.sub(r"[{}]", "", re.sub(r"\s+", " ", body)).strip()
    text = re.sub(r"\s(?=(?:n|v|adj|adv) 1:)", "\n", text)
    senses = re.sub(r"\[(?:syn|ant|also):[^\]]*\]", "", text)
    return text, re.sub(r"\s+", " ", senses).strip()


def dictionary(name: str) -> Iterator[dict]:
    clean = clean_gcide if name == "gcide" else clean_wordnet
    source = "gcide" if name == "gcide" else "wordnet"
    for headword, raw in dictd_entries(name):
        text, senses = clean(headword, raw)
        if len(senses) < 3 and len(text) < 3:
            continue
        yield {"source": source, "headword": headword, "text": text, "definition": senses,
               "split": split_of(f"dict:{headword.lower()}")}


# ------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".data/corpus"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))

    def count(source: str, split: str, text: str, sections: int = 0) -> None:
        for key in (split, "all"):
            c = stats[source][key]
            c["documents"] += 1
            c["sections"] += sections
            c["characters"] += len(text)
            c["words"] += len(text.split())

    with open(args.out / "docs.jsonl", "w", encoding="utf-8") as f:
        for docs in (python_docs(PYTHON_DOCS), postgres_docs(POSTGRES_DOCS),
                     debian_reference(DEBIAN_REFERENCE)):
            for doc in docs:
                text = "\n".join(s["title"] + "\n" + s["text"] for s in doc["sections"])
                if len(text.split()) < 20:
                    continue
                count(doc["source"], doc["split"], text, len(doc["sections"]))
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    with open(args.out / "dict.jsonl", "w", encoding="utf-8") as f:
        for name in ("gcide", "wn"):
            for entry in dictionary(name):
                count(entry["source"], entry["split"], entry["headword"] + "\n" + entry["text"])
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    table = {src: {k: dict(v) for k, v in by.items()} for src, by in stats.items()}
    (args.out / "stats.json").write_text(json.dumps(table, indent=2) + "\n")
    for src, by in table.items():
        a, held = by["all"], by.get("heldout", {}).get("documents", 0)
        print(f"{src:18s} docs={a['documents']:7d} held-out={held:6d}"
              f" chars={a['characters'] / 1e6:7.2f}M words={a['words'] / 1e6:6.2f}M")


if __name__ == "__main__":
    main()
