"""The built book opened in Chromium (Playwright), as a reader would: offline, at a desktop and a phone width.

The book is the one `make strict PROFILE=smoke` builds (CI builds it before the tests); set
``MMLIB_BROWSER_PROFILES=smoke,default`` to check other built profiles too. Full-page screenshots of every
page land in ``_build/<profile>/screenshots/`` for review.
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from mmlib import paths
from mmlib.build import toc_files

import pagecheck

PROFILES = [p for p in os.environ.get("MMLIB_BROWSER_PROFILES", "smoke").split(",") if p]


@pytest.fixture(scope="module")
def browser():
    chromium = pagecheck.find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed (Debian package `chromium`; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as p:
        browser = pagecheck.launch(p, chromium)
        yield browser
        browser.close()


def test_pagecheck_reports_what_a_reader_would_see(tmp_path, browser):
    """The checker itself fails a page with a CDN script, a console error, a missing file, an uncaptioned
    figure, a table wider than a phone and a caption too faint to read; a tidy page passes."""
    (tmp_path / "bad.html").write_text(
        "<html><body><main><p>text</p>"
        "<script src='https://cdn.example.org/lib.js'></script><script>console.error('boom')</script>"
        "<div class='cell_output'><img src='missing.png'></div>"
        "<div class='cell_output'><table style='width:900px'><tr><td>1</td></tr></table></div>"
        "<figure><figcaption style='color:#eee'>A faint caption.</figcaption></figure>"
        "</main></body></html>")
    (tmp_path / "good.html").write_text(
        "<html><body><main><figure><figcaption>A table.</figcaption>"
        "<div style='overflow-x:auto'><div class='cell_output'><table style='width:900px'>"
        "<tr><td>1</td></tr></table></div></div></figure></main></body></html>")
    bad = pagecheck.check_page(browser, tmp_path, "bad.html", width=390)
    assert not bad.ok
    assert any("cdn.example.org" in e for e in bad.errors)
    assert any("boom" in e for e in bad.errors)
    assert any("missing.png" in e for e in bad.errors)
    assert any("900 px wide" in p for p in bad.layout) and any("scrolls sideways" in p for p in bad.layout)
    assert len(bad.uncaptioned) == 2  # the table and the image
    assert any("A faint caption" in p and "contrast" in p for p in bad.layout)
    good = pagecheck.check_page(browser, tmp_path, "good.html", width=390, screenshot_dir=tmp_path / "shots")
    assert good.ok, (good.errors, good.layout, good.uncaptioned)
    (tmp_path / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=good.html" />')
    assert pagecheck.book_pages(tmp_path) == ["bad.html", "good.html"]
    assert pagecheck.book_redirects(tmp_path) == {"index.html": "good.html"}
    with Image.open(good.screenshot) as shot:
        assert shot.size[0] == 390


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("width,dark", [(1400, False), (390, False), (390, True)])
def test_every_page_of_the_built_book_reads_well(browser, profile, width, dark):
    html = paths.ROOT / "_build" / profile / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip(f"no built {profile} book at {html}: run `make strict PROFILE={profile}` first (CI does)")
    pages = pagecheck.book_pages(html)
    for stub, target in pagecheck.book_redirects(html).items():
        assert target in pages, f"{stub} redirects to {target}, which is not a page of the built book"
    assert "index.html" in pagecheck.book_redirects(html), "the site's front door should send readers to the book"
    for chapter in toc_files(paths.ROOT / "_toc.yml"):
        assert f"{chapter}.html" in pages, f"chapter {chapter} missing from the built book"
    shots = paths.ROOT / "_build" / profile / "screenshots"
    reports = [pagecheck.check_page(browser, html, page, width=width, dark=dark, screenshot_dir=shots)
               for page in pages]
    bad = {r.page: {k: v for k, v in (("errors", r.errors), ("layout", r.layout), ("uncaptioned", r.uncaptioned),
                                      ("figures drawn", f"{r.figures_drawn}/{r.figures}")) if v and v != "0/0"}
           for r in reports if not r.ok}
    assert not bad, bad
    assert sum(r.figures for r in reports) >= 10
    for r in reports:
        with Image.open(r.screenshot) as shot:
            assert shot.size[0] == width and shot.size[1] >= 600
    front = next(r.text for r in reports if r.page == "book/index.html")
    assert "Abstract of this run" in front and "synthetic" in front.lower()


def test_figures_follow_the_themes_dark_mode(tmp_path, browser):
    """book/_static/plotly-dark.js: in dark mode a figure's background turns transparent and its text light; back in
    light mode the figure's own colours return; the data is untouched."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    from mmlib.build import PLOTLY_DARK_JS, PLOTLY_JS

    (tmp_path / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
    (tmp_path / PLOTLY_DARK_JS).write_text((paths.ROOT / "book" / "_static" / PLOTLY_DARK_JS).read_text())
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]), layout={"template": "plotly_white"})
    body = fig.to_html(include_plotlyjs=False, full_html=False)
    (tmp_path / "fig.html").write_text(
        f"<html data-theme='dark'><head><script src='{PLOTLY_JS}'></script><script src='{PLOTLY_DARK_JS}'></script>"
        f"</head><body>{body}</body></html>")
    context = browser.new_context()
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        tab.goto((tmp_path / "fig.html").as_uri(), wait_until="load")
        state = ("() => { const d = document.querySelector('.plotly-graph-div'); const l = d._fullLayout; "
                 "return [l.paper_bgcolor, l.font.color, l.xaxis.gridcolor, d.data[0].y.join(',')]; }")
        tab.wait_for_function("() => document.querySelector('.plotly-graph-div')._mmlibDark === true", timeout=10000)
        paper, font, grid, data = tab.evaluate(state)
        assert paper == "rgba(0,0,0,0)" and font == "#ced6dd" and grid == "#3b4148" and data == "0,1"
        tab.evaluate("() => { document.documentElement.dataset.theme = 'light'; }")
        tab.wait_for_function("() => document.querySelector('.plotly-graph-div')._mmlibDark === false", timeout=10000)
        paper, font, grid, data = tab.evaluate(state)
        assert paper in ("white", "#fff") and font == "#2a3f5f" and data == "0,1", (paper, font)
    finally:
        context.close()
    assert not errors
