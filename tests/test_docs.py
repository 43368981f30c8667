"""The README is a landing page: short, every docs page one click from it, and no link in README or docs/ that
leads nowhere (a moved file or a renamed heading breaks a test, not a reader's click)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"
        if fragment and resolved.suffix == ".md":
            assert fragment in anchors(resolved), f"{page.relative_to(REPO)} links to #{fragment}, no such heading"


def test_readme_is_a_landing_page_that_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert readme.index("make fit") < readme.index("## Results") < readme.index("## Where to go next")
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    pages = {page.resolve() for page in (REPO / "docs").glob("*.md")}
    assert not pages - linked, f"docs pages the README does not link: {sorted(p.name for p in pages - linked)}"
