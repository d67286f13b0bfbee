"""The shell blocks of README.md and docs/*.md that are marked runnable, as doctests are.

A block is runnable when the line before its opening fence is `<!-- runnable -->`:

    <!-- runnable -->
    ```bash
    curl http://127.0.0.1:8000/queue/stats
    ```

It must then work as typed, from the repository root, on a fresh shell against the embedded
platform (`make up`): tests/e2e/test_docs.py runs each one with bash, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
FENCES = ("```bash", "```sh")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


class MarkerError(ValueError):
    """A runnable marker that is not right above a bash block, or a block left open."""


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def runnable_blocks(paths: list[Path] | None = None) -> list[Block]:
    """Every marked block, in document order."""
    blocks = []
    for path in paths if paths is not None else documents():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != MARKER:
                continue
            fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if fence not in FENCES:
                raise MarkerError(f"{path}:{i + 1}: {MARKER} must be right above a ```bash fence")
            body = []
            for j in range(i + 2, len(lines)):
                if lines[j].strip() == "```":
                    break
                body.append(lines[j])
            else:
                raise MarkerError(f"{path}:{i + 2}: the runnable block is never closed")
            blocks.append(Block(path, i + 2, "\n".join(body) + "\n"))
    return blocks
