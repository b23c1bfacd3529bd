"""Reading a user's folder of text, Markdown and HTML files into plain-text documents."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from mamba3_integrations.errors import InputError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES

_SKIPPED_TAGS = {"script", "style", "nav", "header", "footer", "head", "noscript", "svg"}
# Navigation and chrome of generated documentation (DocBook, Sphinx).
_SKIPPED_CLASSES = {"navheader", "navfooter", "toc", "related", "sphinxsidebar", "footer",
                    "headerlink", "breadcrumbs"}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "wbr", "source"}
_BLOCK_TAGS = {
    "p", "div", "section", "article", "br", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr",
    "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "title",
}


@dataclass(frozen=True)
class SourceDocument:
    """A document to ingest: a stable id (its path relative to the folder), title, text."""

    doc_id: str
    title: str
    text: str


class _TextExtractor(HTMLParser):
    """Collects visible text; headings become Markdown headings, blocks become lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.depth = 0
        self.skip_below: int | None = None  # depth of the element being skipped
        self.in_pre = 0
        self.title = ""
        self._in_title = False

    def _skips(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        classes = set((dict(attrs).get("class") or "").split())
        return tag in _SKIPPED_TAGS or bool(classes & _SKIPPED_CLASSES)

    def _newline(self, text: str) -> None:
        if not self.parts or not self.parts[-1].endswith("- "):
            self.parts.append(text)

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _VOID_TAGS:
            if tag in _BLOCK_TAGS and self.skip_below is None:
                self._newline("\n")
            return
        self.depth += 1
        if self.skip_below is None and self._skips(tag, attrs):
            self.skip_below = self.depth
        if self.skip_below is not None:
            return
        if tag in _BLOCK_TAGS:
            self._newline("\n\n" if tag not in ("li", "tr", "dd") else "\n")
        if re.fullmatch(r"h[1-6]", tag):
            self.parts.append("#" * int(tag[1]) + " ")
        if tag == "pre":
            self.in_pre += 1
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _VOID_TAGS:
            return
        if self.skip_below is not None:
            if self.depth == self.skip_below:
                self.skip_below = None
            self.depth -= 1
            return
        self.depth -= 1
        if tag == "pre":
            self.in_pre = max(0, self.in_pre - 1)
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self.skip_below is not None or (self.depth == 0 and not data.strip()):
            return
        if not self.in_pre:
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith("\n"):
                data = data.lstrip()
        self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page (headings kept as ``#`` lines) and its ``<title>``."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = text.replace("\u00b6", "")  # Sphinx permalink marks
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text, " ".join(parser.title.split())


def read_document(path: Path, doc_id: str) -> SourceDocument:
    """One file as a SourceDocument; raises InputError for undecodable or empty files."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not valid UTF-8 (byte {exc.start}); convert it first") from exc
    if path.suffix.lower() in HTML_SUFFIXES:
        text, title = html_to_text(raw)
    else:
        text = raw.strip()
        heading = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
        title = heading.group(1).strip() if heading else path.stem
    if not text:
        raise InputError(f"{path} has no text")
    return SourceDocument(doc_id=doc_id, title=title or path.stem, text=text)


def load_folder(folder: str | Path) -> list[SourceDocument]:
    """Every text, Markdown and HTML file under ``folder`` (recursively), sorted by path.

    Empty files are skipped; a folder with no supported file is an InputError.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    documents = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        try:
            documents.append(read_document(path, path.relative_to(root).as_posix()))
        except InputError as exc:
            if "has no text" not in str(exc):
                raise
    if not documents:
        raise InputError(f"no text, Markdown or HTML files with text under {root} "
                         f"(looked for {sorted(SUPPORTED_SUFFIXES)})")
    return documents
