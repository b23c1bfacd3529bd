"""Reading folders of text, Markdown and HTML files."""

from __future__ import annotations

import pytest

from mamba3_integrations import InputError
from mamba3_integrations.app.documents import html_to_text, load_folder

PAGE = """<html><head><title>Indexes  Guide</title><style>p {color: red}</style></head>
<body><div class="navheader">Prev Up Next</div>
<h1>Index Types</h1><p>PostgreSQL provides   several
index types.</p><ul><li><p>B-tree</p></li><li>GIN</li></ul>
<pre>CREATE INDEX i ON t (c);
  -- indented</pre><script>alert(1)</script><p>Caf&eacute; &amp; more<br>next line</p>
</body></html>"""


def test_html_to_text_keeps_structure_and_drops_chrome():
    text, title = html_to_text(PAGE)
    assert title == "Indexes Guide"
    assert text.startswith("# Index Types\n\nPostgreSQL provides several index types.")
    assert "-  B-tree" in text or "- B-tree" in text
    assert "CREATE INDEX i ON t (c);\n  -- indented" in text
    assert "Café & more\nnext line" in text
    for chrome in ("Prev Up Next", "color: red", "alert(1)"):
        assert chrome not in text


def test_load_folder_reads_supported_files_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "page.html").write_text(PAGE, encoding="utf-8")
    (tmp_path / "a.md").write_text("# Title A\n\nSome *markdown* text.", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("plain text", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("   \n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = load_folder(tmp_path)
    assert [d.doc_id for d in docs] == ["a.md", "b/page.html", "notes.txt"]
    assert [d.title for d in docs] == ["Title A", "Indexes Guide", "notes"]


def test_bad_folders_are_reported(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_folder(tmp_path / "missing")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="no text, Markdown or HTML files"):
        load_folder(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bad")
    with pytest.raises(InputError, match="not valid UTF-8"):
        load_folder(tmp_path)
