"""The book as built by `make strict PROFILE=smoke` (CI builds it before the tests): every chapter loads in
headless Chromium without console errors, its plotly figures are drawn, and screenshots are saved."""

from pathlib import Path

import pytest

from mmlib import paths
from mmlib.build import check_html, find_chromium, toc_files

HTML = paths.ROOT / "_build" / "smoke" / "_build" / "html"


@pytest.mark.slow
def test_smoke_book_renders_in_a_browser(tmp_path):
    if not (HTML / "index.html").is_file():
        pytest.skip(f"no built smoke book at {HTML}: run `make strict PROFILE=smoke` first (CI does)")
    if find_chromium() is None:
        pytest.skip("chromium not installed (Debian package `chromium`; .ci/run installs it)")
    shots = paths.ROOT / "_build" / "smoke" / "screenshots"
    reports = check_html(HTML, screenshot_dir=shots)
    pages = {Path(r.page).relative_to(HTML).with_suffix("").as_posix() for r in reports}
    for chapter in toc_files(paths.ROOT / "_toc.yml"):
        assert chapter in pages, f"chapter {chapter} missing from the built book"
    bad = [(r.page, r.errors) for r in reports if not r.ok]
    assert not bad, bad
    drawn = sum(r.figures_drawn for r in reports)
    assert drawn >= 10 and all(r.figures_drawn == r.figures for r in reports)
    assert all(Path(r.screenshot).is_file() for r in reports if r.screenshot)
    text = next(r.text for r in reports if Path(r.page).name == "index.html" and "book" in Path(r.page).parts)
    assert "Abstract of this run" in text and "synthetic" in text.lower()
