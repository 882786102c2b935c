"""The book as built by `make strict PROFILE=smoke` (CI builds it before the tests), read as files: the executed
notebooks hold no stderr or progress bars, and no page shows setup code, raw JSON or the building machine's paths.

Set ``MMLIB_BROWSER_PROFILES=smoke,default`` to check other built profiles too (as tests/test_browser.py does).
"""

from __future__ import annotations

import html as htmllib
import os
import re

import pytest

from mmlib import paths
from mmlib.build import execution_order, stray_outputs

PROFILES = [p for p in os.environ.get("MMLIB_BROWSER_PROFILES", "smoke").split(",") if p]


def _built(profile: str):
    out = paths.ROOT / "_build" / profile
    if not (out / "_build" / "html" / "index.html").is_file():
        pytest.skip(f"no built {profile} book in {out}: run `make strict PROFILE={profile}` first (CI does)")
    return out / "source", out / "_build" / "html"


def _page_text(page) -> str:
    """What a reader can read on a page: its text, without tags, scripts (plotly's JSON) and styles."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", text, flags=re.S)
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", text))


@pytest.mark.parametrize("profile", PROFILES)
def test_no_executed_notebook_wrote_to_stderr_or_drew_a_progress_bar(profile):
    source, _ = _built(profile)
    stray = {nb.name: stray_outputs(source / nb.relative_to(paths.ROOT)) for nb in execution_order(paths.ROOT)}
    assert not {k: v for k, v in stray.items() if v}


@pytest.mark.parametrize("profile", PROFILES)
def test_pages_show_no_setup_code_raw_json_or_local_path(profile):
    _, html = _built(profile)
    local = {str(paths.ROOT), str(paths.ROOT.resolve()), str(paths.RESULTS.resolve()), str(paths.SHARED_DATA.resolve()),
             "/tmp/", "/root/", "/home/"}
    pages = sorted(html.glob("book/*.html"))
    assert len(pages) == len(execution_order(paths.ROOT)) + 1  # the chapters and intro.md
    for path in html.rglob("*"):  # nothing the site publishes, pages or not
        if path.is_file() and path.suffix in {".html", ".js", ".json", ".ipynb", ".txt", ".md"}:
            text = path.read_text(encoding="utf-8", errors="replace")
            assert not [p for p in local if p in text], f"{path.relative_to(html)} publishes a local path"
    for page in pages:
        raw = page.read_text(encoding="utf-8")
        found = [p for p in local if p in raw]
        assert not found, f"{page.name} publishes local paths {found}"
        text = _page_text(page)
        for setup in ("setup_notebook(", "load_results(", "injected-parameters", "Injected parameters"):
            assert setup not in text, f"{page.name} shows setup code ({setup})"
        assert "TqdmWarning" not in raw and "Traceback" not in raw, page.name
        # a command quoted in prose (the real-data chapter names the command of each figure it lacks) keeps its
        # double hyphens: typography turning `--profile` into an en dash would hand the reader a broken command
        assert not re.search(r"\s\u2013[a-z][a-z-]+", text), (page.name, re.findall(r".{40}\s\u2013[a-z][a-z-]+", text)[:3])
    stats = _page_text(html / "book" / "10_statistics.html")
    assert '{"' not in stats and "detail" not in stats and "p_holm" not in stats
    assert re.search(r"AUC A\s+AUC B", stats) and "p (Holm)" in stats


@pytest.mark.parametrize("profile", PROFILES)
def test_colophon_names_commit_profile_and_build_date_and_the_paper_its_authors(profile):
    _, html = _built(profile)
    colophon = _page_text(html / "book" / "13_colophon.html")
    assert re.search(r"git commit\s+[0-9a-f]{40}", colophon)
    assert re.search(rf"profile\s+{re.escape(profile)}\b", colophon)
    assert re.search(r"build date\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC", colophon)
    front = _page_text(html / "book" / "index.html")
    assert "Rashedi" in front and "authors of the 2026 article" not in front
