"""Docs cannot go stale: every marked command output in README.md and docs/*.md is what
the code prints now (docs/render.py). Fix a failure with: python docs/render.py"""
import difflib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("render", ROOT / "docs" / "render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


@pytest.mark.parametrize("name", render.DOCS)
def test_doc_output_is_current(name):
    old = (ROOT / name).read_text()
    new = render.render_text(old)
    diff = "\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), name, "rendered now", lineterm="", n=1))
    assert new == old, f"{name} shows stale output; run: python docs/render.py\n{diff[:3000]}"


def test_render_runs_python_blocks_and_skips_marked_ones():
    text = "```python\n>>> x = 2\n>>> x * 21\nold\n```\n<!-- render: skip (slow) -->\n```text\n$ memplan nope\nkept\n```"
    assert render.render_text(text) == ("```python\n>>> x = 2\n>>> x * 21\n42\n```\n<!-- render: skip (slow) -->\n"
                                        "```text\n$ memplan nope\nkept\n```")
