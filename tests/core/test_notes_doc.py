"""docs/notes.md: its python blocks run in order, as one script, and their asserts hold."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "notes.md"
NOTES = Path(__file__).resolve().parents[3] / "shared" / "NOTES.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_notes_doc_examples_run():
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    namespace: dict = {"__name__": "notes_doc"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/notes.md block {number}", "exec"), namespace)
        except Exception as err:  # name the failing block, then let pytest show the traceback
            raise AssertionError(f"docs/notes.md python block {number} failed:\n{block}") from err


def test_notes_doc_uses_the_notes_sentence_and_lines():
    text = DOC.read_text(encoding="utf-8")
    assert "a fluffy blue creature roamed the verdant forest" in text
    for line in ("E_1 · W_K = K_1", "K_2 · Q_4", "maps embedding to a smaller space",
                 "looking for adjectives in preceding positions"):
        assert line in text, line
    if not NOTES.exists():
        pytest.skip("the shared notes are not next to this checkout")
    notes = NOTES.read_text(encoding="utf-8")
    assert "E_1 \\cdot W_K = K_1" in notes and "K_2 \\cdot Q_4" in notes
