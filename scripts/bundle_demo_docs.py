"""Extract the demo documents shipped with the package from Debian's documentation packages.

Needs ``postgresql-doc-15`` and ``python3.11-doc`` (``apt-get install``). Writes Markdown-ish
text to ``mamba3_integrations/data/demo_docs/`` and the list of sources with their licences.
Rerun it to rebuild the bundle.
"""

from __future__ import annotations

from pathlib import Path

from mamba3_integrations.app.documents import html_to_text

PG = Path("/usr/share/doc/postgresql-doc-15/html")
PY = Path("/usr/share/doc/python3.11/html")
PAGES = {
    "postgresql": [PG / f"{name}.html" for name in (
        "textsearch-intro", "indexes-types", "tutorial-transactions", "tutorial-window",
        "datatype-json", "mvcc-intro", "tutorial-join", "ddl-constraints")],
    "python": [PY / "tutorial" / f"{name}.html" for name in (
        "venv", "errors", "datastructures", "modules", "classes")] + [PY / "howto/sorting.html"],
}
LICENCES = {
    "postgresql": "PostgreSQL documentation, (c) The PostgreSQL Global Development Group, "
                  "PostgreSQL Licence (Debian package postgresql-doc-15)",
    "python": "Python 3.11 documentation, (c) Python Software Foundation, PSF Licence "
              "Agreement / Zero-Clause BSD for code examples (Debian package python3.11-doc)",
}
OUT = Path(__file__).resolve().parents[1] / "mamba3_integrations" / "data" / "demo_docs"


def main() -> None:
    lines = ["# Demo documents", "", "Extracted by `scripts/bundle_demo_docs.py` from:", ""]
    for group, pages in PAGES.items():
        (OUT / group).mkdir(parents=True, exist_ok=True)
        lines.append(f"- `{group}/`: {LICENCES[group]}")
        for page in pages:
            text, title = html_to_text(page.read_text(encoding="utf-8"))
            target = OUT / group / f"{page.stem}.md"
            target.write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
            lines.append(f"  - `{target.name}` from `{page}` ({len(text)} characters)")
    (OUT / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
