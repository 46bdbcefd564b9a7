"""One of the zoo's English sources, and the split every source shares.

The docstrings of the Python standard library and the language reference in
`pydoc_data`: on every machine that runs finetrace, real prose by many authors,
PSF-2.0. Technical English alone knows little of the world, so `english.py` mixes
it with broad sources. Paragraphs are split into pretraining, fine-tuning and
held-out text by a hash of their text, so the split does not depend on file order.
"""

import ast
import hashlib
import pydoc_data.topics
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

MIN_WORDS = 8  # shorter paragraphs are mostly headings and parameter stubs
SKIPPED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
DOCSTRING_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class GeneralSplits:
    """Disjoint splits: `pretrain` trains the base, `finetune` feeds the control and
    mixing, `heldout` is never trained on by any model."""

    pretrain: list[str]
    finetune: list[str]
    heldout: list[str]


def general_paragraphs() -> list[str]:
    """Every prose paragraph of the source, deduplicated, in a fixed order."""
    paragraphs = [p for text in _docstrings() for p in _prose_paragraphs(text)]
    paragraphs += [p for text in pydoc_data.topics.topics.values() for p in _prose_paragraphs(text)]
    return list(dict.fromkeys(paragraphs))


def split_paragraphs(paragraphs: list[str], finetune: float, heldout: float) -> GeneralSplits:
    """Assign each paragraph to a split by the hash of its text (stable across runs)."""
    splits = GeneralSplits([], [], [])
    for paragraph in paragraphs:
        bucket = int(hashlib.sha256(paragraph.encode()).hexdigest()[:8], 16) / 16**8
        if bucket < heldout:
            splits.heldout.append(paragraph)
        elif bucket < heldout + finetune:
            splits.finetune.append(paragraph)
        else:
            splits.pretrain.append(paragraph)
    return splits


def _docstrings() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.parts))
    texts = []
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # a few stdlib files are deliberately invalid
            continue
        texts += [ast.get_docstring(n) or "" for n in ast.walk(tree) if isinstance(n, DOCSTRING_NODES)]
    return texts


def _prose_paragraphs(text: str) -> list[str]:
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        if block.startswith((" ", "\t")) or ">>>" in block:  # code samples, not prose
            continue
        paragraph = " ".join(block.split())
        if len(paragraph.split()) >= MIN_WORDS and paragraph[0].isalpha():
            paragraphs.append(paragraph)
    return paragraphs
