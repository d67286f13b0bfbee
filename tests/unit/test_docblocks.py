"""The runnable-block markers in README.md and docs/: well formed, and found where expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docblocks import MarkerError, runnable_blocks


def test_marked_blocks_are_found_with_their_location(tmp_path: Path):
    """A marked bash block is extracted with the line of its fence; unmarked ones are not."""
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n\n```bash\nnot me\n```\n\n<!-- runnable -->\n```bash\necho hi\n```\n")
    [block] = runnable_blocks([doc])
    assert block.line == 8 and block.text == "echo hi\n"


def test_a_marker_away_from_a_fence_is_an_error(tmp_path: Path):
    """A marker that is not right above a bash fence fails instead of silently testing nothing."""
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- runnable -->\n\n```bash\necho hi\n```\n")
    with pytest.raises(MarkerError, match="right above"):
        runnable_blocks([doc])


def test_the_docs_mark_the_quick_start_a_kb_load_and_the_operator_commands():
    """README's quick start, a knowledge-base load and operations.md's commands are runnable."""
    blocks = runnable_blocks()
    text = "\n".join(b.text for b in blocks)
    assert "/inbound-message" in text and "/queue/stats" in text
    assert "tests/fixtures/kb/velora" in text and "/documents" in text
    assert "shvya dlq replay" in text and "shvya consumers" in text
