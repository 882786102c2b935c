"""Numbers in prose are computed, not typed: the book's markdown and the README hold no hand-typed decimal figure.

Every figure a chapter's prose quotes is glued from a file the build wrote (``{glue:text}`name```), and the README
names the command and the file instead of quoting a figure. Allowed: quotations of the paper and a few constants
that are not results (each with its reason below). Inline code and code blocks (commands, parameters) are not prose.
"""

import json
import re

import pytest

from mmlib.paths import BOOK, ROOT

#: The paper's own figures, quoted for comparison.
PAPER = {"0.992", "0.91", "2.94"}
#: Decimals that are not results: versions, licences, fixed parameters of the method.
NOT_RESULTS = {
    "3.11": "Python version",
    "4.0": "CC BY 4.0 licence",
    "0.5": "the probability cut-off of the <metric>@0.5 columns",
    "0.3": "CUF-MT's multi-task loss weight (a parameter of the model)",
}
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def prose(text: str) -> str:
    """Markdown without code blocks, inline code and MyST roles (glue names, citations)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"\{[\w:-]+\}`[^`]*`", "", text)
    return re.sub(r"`[^`]*`", "", text)


def typed_decimals(text: str) -> list[str]:
    return [d for d in DECIMAL.findall(prose(text)) if d not in PAPER and d not in NOT_RESULTS]


def _sources():
    yield "README.md", (ROOT / "README.md").read_text()
    for nb in sorted(BOOK.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"{nb.name} cell {i}", "".join(cell["source"])
    for md in sorted(BOOK.glob("*.md")):
        yield md.name, md.read_text()


@pytest.mark.parametrize("where,text", list(_sources()), ids=lambda v: v if isinstance(v, str) and len(v) < 60 else "")
def test_no_hand_typed_decimal_in_prose(where, text):
    found = typed_decimals(text)
    assert not found, (f"{where}: hand-typed figure(s) {found}; glue them from a file the build writes "
                       "(mmlib.book.glue) or, in the README, name the command and file")


def test_the_scan_catches_a_typed_figure_and_spares_glue_and_code():
    assert typed_decimals("the best model reached 0.885 (CI 0.84-0.92)") == ["0.885", "0.84", "0.92"]
    assert typed_decimals("glued {glue:text}`best_auc:.3f`, code `--margin 0.15`, the paper's 0.992") == []
    assert typed_decimals("```\nlr: 0.002\n```\nversion 1.2.3") == []
