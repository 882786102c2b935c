"""Open built HTML pages in Debian's Chromium through Playwright, offline, and report what a reader would see.

A page passes when nothing on it failed: no uncaught exception, no ``console.error``, no failed or blocked
request (any request that is not a local file is aborted, so a CDN dependency shows up), every plotly
figure drawn, no table or figure wider than the text column (a wide table must scroll inside its own
box, its caption in view) at each viewport width, every output table and figure captioned, and captions and
table text legible on their background (light or dark theme).
"""

from __future__ import annotations

import re

import shutil
from dataclasses import dataclass, field
from pathlib import Path

#: Viewport widths a page is checked at: a desktop window and a phone.
WIDTHS: tuple[int, ...] = (1400, 390)
#: Schemes a page may load from; anything else is aborted and reported.
LOCAL_SCHEMES: tuple[str, ...] = ("file:", "data:", "blob:", "about:")

_FIGURES_DRAWN_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div'))
    .every(d => d.querySelector('svg.main-svg'))"""

# What a reader sees of each table and figure in the article: a box that sticks out of the text column, a
# box cut off by an ancestor that does not scroll, or a caption outside the column.
_LAYOUT_JS = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const col = article.getBoundingClientRect();
  const describe = el => {
    const cap = el.querySelector('caption, figcaption') || el.closest('figure')?.querySelector('figcaption');
    const text = (cap ? cap.innerText : el.innerText || '').trim().split('\\n')[0].slice(0, 60);
    return `${el.tagName.toLowerCase()}.${(el.className.baseVal ?? el.className).split(' ')[0]} "${text}"`;
  };
  const problems = [];
  const boxes = article.querySelectorAll('table, .plotly-graph-div, img, figure');
  for (const el of boxes) {
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    // the nearest ancestor inside the article that clips horizontally
    let clip = null;
    for (let a = el.parentElement; a && a !== article; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox !== 'visible') { clip = a; break; }
    }
    const box = clip ? clip.getBoundingClientRect() : r;
    if (box.left < col.left - 1 || box.right > col.right + 1) {
      problems.push(`${describe(el)} is ${Math.round(box.width)} px wide in a ${Math.round(col.width)} px column`);
    }
    if (clip && r.width > clip.clientWidth + 1) {
      const ox = getComputedStyle(clip).overflowX;
      if (ox !== 'auto' && ox !== 'scroll') {
        problems.push(`${describe(el)} is cut off by a box that does not scroll (overflow-x: ${ox})`);
      }
    }
  }
  for (const cap of article.querySelectorAll('caption, figcaption')) {
    const r = cap.getBoundingClientRect();
    if (r.width === 0) continue;
    const text = cap.innerText.trim();
    if (r.left < col.left - 1 || r.right > col.right + 1) {
      problems.push(`caption "${text.slice(0, 60)}" runs outside the column (${Math.round(r.left)}..${Math.round(r.right)} px)`);
    }
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1) {
    problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px content in a ${window.innerWidth} px window`);
  }
  return problems;
}"""

# Captions and table cells whose text is too faint on what lies behind it (WCAG contrast below 3:1), as when a
# theme's dark mode paints light text on a light box.
_CONTRAST_JS = """() => {
  const rgba = c => (c.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const behind = el => {
    for (let a = el; a; a = a.parentElement) {
      const c = rgba(getComputedStyle(a).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c;
    }
    return [255, 255, 255];
  };
  const problems = new Map();
  const article = document.querySelector('article.bd-article') || document.body;
  for (const el of article.querySelectorAll('figcaption, caption, .cell_output table td, .cell_output table th')) {
    if (!el.innerText.trim()) continue;
    const [l1, l2] = [luminance(rgba(getComputedStyle(el).color)), luminance(behind(el))];
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const kind = el.tagName.toLowerCase();
    if (ratio < 3 && !problems.has(kind)) {
      problems.set(kind, `${kind} "${el.innerText.trim().slice(0, 40)}" has contrast ${ratio.toFixed(1)}:1 with its background`);
    }
  }
  return [...problems.values()];
}"""

# Output tables and figures without a caption (a table's <caption>, or a <figure>'s <figcaption>).
_UNCAPTIONED_JS = """() => {
  const out = [];
  const article = document.querySelector('article.bd-article') || document.body;
  for (const t of article.querySelectorAll('.cell_output table')) {
    if (!t.querySelector('caption') && !t.closest('figure')?.querySelector('figcaption')) {
      out.push('table: ' + (t.innerText || '').trim().split('\\n')[0].slice(0, 60));
    }
  }
  for (const f of article.querySelectorAll('.plotly-graph-div, .cell_output img')) {
    if (!f.closest('figure')?.querySelector('figcaption')) out.push('figure ' + (f.id || f.src || ''));
  }
  return out;
}"""


def find_chromium() -> str | None:
    """Debian's ``chromium`` (what ``.ci/run`` installs), or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@dataclass
class PageReport:
    """What the browser saw on one page at one width."""

    page: str
    width: int
    errors: list[str] = field(default_factory=list)
    figures: int = 0
    figures_drawn: int = 0
    layout: list[str] = field(default_factory=list)
    uncaptioned: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.layout and not self.uncaptioned and self.figures_drawn == self.figures


_REFRESH = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\d+;\s*url=([^"']+)["']""", re.I)


def redirect_target(path: Path) -> str | None:
    """The page a redirect stub (Jupyter Book's root ``index.html``: one ``<meta http-equiv="Refresh">``)
    sends the reader to, or None for a real page."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    match = _REFRESH.search(text[:2000])
    return match.group(1) if match and "<body" not in text.lower() else None


def book_pages(html_dir: Path) -> list[str]:
    """Every page of a built book, relative to ``html_dir`` (no ``genindex``/``search``, static files or
    redirect stubs: a stub navigates away as it loads, so it is checked by ``book_redirects`` instead)."""
    html_dir = Path(html_dir)
    skip = {"genindex.html", "search.html"}
    return sorted(
        p.relative_to(html_dir).as_posix()
        for p in html_dir.rglob("*.html")
        if p.name not in skip and not {"_static", "_sources", "_images"} & set(p.relative_to(html_dir).parts)
        and redirect_target(p) is None
    )


def book_redirects(html_dir: Path) -> dict[str, str]:
    """``{stub: target}`` for every redirect stub of a built book, the target relative to ``html_dir``."""
    html_dir = Path(html_dir)
    out = {}
    for p in html_dir.rglob("*.html"):
        target = redirect_target(p)
        if target is not None:
            out[p.relative_to(html_dir).as_posix()] = (p.parent / target).resolve().relative_to(
                html_dir.resolve()).as_posix()
    return out


def check_page(browser, html_dir: Path, page: str, *, width: int, screenshot_dir: Path | None = None,
               dark: bool = False, settle_ms: int = 15000) -> PageReport:
    """Open one page at one viewport width with the network blocked, and report what went wrong.

    Args:
        browser: a Playwright ``Browser``.
        html_dir: the site (``.../_build/html``).
        page: the page, relative to ``html_dir``.
        width: viewport width in CSS pixels.
        screenshot_dir: where to save a full-page PNG (``<page with / as __>.<width>[.dark].png``).
        dark: the theme's dark mode.
        settle_ms: how long to wait for the figures to be drawn.
    """
    path = Path(html_dir).resolve() / page
    if not path.is_file():
        raise FileNotFoundError(f"page {path} does not exist")
    report = PageReport(page=page, width=width)
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme="dark" if dark else "light")
    if dark:
        # the theme reads its mode from localStorage before the first paint
        context.add_init_script("localStorage.setItem('mode', 'dark'); localStorage.setItem('theme', 'dark');")
    tab = context.new_page()

    def on_route(route):
        url = route.request.url
        if url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            report.errors.append(f"blocked request to the network: {url}")
            route.abort()

    tab.route("**/*", on_route)
    tab.on("console", lambda m: report.errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "assert") else None)
    tab.on("pageerror", lambda exc: report.errors.append(f"uncaught exception: {exc}"))
    tab.on("requestfailed", lambda r: report.errors.append(f"failed request: {r.url} ({r.failure})")
           if not r.url.startswith(("http:", "https:")) else None)
    try:
        tab.goto(path.as_uri(), wait_until="load")
        report.figures = tab.locator(".plotly-graph-div").count()
        if report.figures:
            try:
                tab.wait_for_function(_FIGURES_DRAWN_JS, timeout=settle_ms)
            except Exception:  # a timeout: counted below as figures not drawn
                pass
        report.figures_drawn = tab.locator(".plotly-graph-div svg.main-svg").evaluate_all(
            "els => new Set(els.map(e => e.closest('.plotly-graph-div'))).size")
        # plotly redraws on resize; let it finish before measuring
        tab.wait_for_timeout(300)
        report.layout = tab.evaluate(_LAYOUT_JS) + tab.evaluate(_CONTRAST_JS)
        if dark and report.figures_drawn:  # book/_static/plotly-dark.js restyles the light figures
            light = tab.evaluate("() => [...document.querySelectorAll('.plotly-graph-div')].filter(d => d._fullLayout"
                                 " && /^(white|#fff(fff)?|rgb\\(255, ?255, ?255\\))$/i.test(d._fullLayout.paper_bgcolor))"
                                 ".length")
            if light:
                report.layout.append(f"{light} figure(s) keep a white background in dark mode")
        report.uncaptioned = tab.evaluate(_UNCAPTIONED_JS)
        report.text = tab.inner_text("body")
        if screenshot_dir is not None:
            Path(screenshot_dir).mkdir(parents=True, exist_ok=True)
            name = page.replace("/", "__").removesuffix(".html") + f".{width}{'.dark' if dark else ''}.png"
            report.screenshot = Path(screenshot_dir) / name
            tab.screenshot(path=str(report.screenshot), full_page=True)
    finally:
        context.close()
    # chromium logs a failed load twice (console and request); keep each message once
    report.errors = list(dict.fromkeys(report.errors))
    return report


def launch(playwright, chromium: str):
    """Debian's Chromium, headless (``--no-sandbox``: CI runs as root)."""
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
