"""The README's step examples run and print what their ``# ->`` comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## The twelve steps"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find(SECTION)
    assert start >= 0, f"README.md has no {SECTION!r} section"
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end > 0 else len(text)]


def test_readme_step_examples_print_what_they_promise():
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) >= 13  # setup + one per step
    namespace: dict = {}
    for i, block in enumerate(blocks):
        expected = [m.group(1).strip() for m in re.finditer(r"#\s*->\s*(.*)", block)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"README step example {i}", "exec"), namespace)
        assert [line.strip() for line in out.getvalue().splitlines()] == expected, block
