"""The layering rules, checked on every import statement of the source tree (docs: README
"Architecture").

- the library (``ganviews/`` outside ``ganviews/cli/`` and ``__main__``) never imports prefect, ``tasks``,
  ``flows``, ``storage`` nor ``ganviews.cli``;
- ``storage/`` never imports torch, nor the library (whose modules import torch);
- ``tasks/`` never imports ``ganviews.cli`` nor ``flows``.

Every ``import`` / ``from … import`` is read with :mod:`ast`, also those inside functions
(the CLI and the library import heavy modules lazily). Checking direct imports suffices:
with these rules closed under the packages they allow, no chain of imports can reach a
forbidden module either (the library's allowed imports stay in the library; storage
imports neither the library nor torch).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RULES = {
    # package (folder), what is left out (folders, files), forbidden import prefixes
    "ganviews": (
        ("ganviews/cli", "ganviews/__main__.py"),  # the command line (python -m ganviews)
        ("prefect", "tasks", "flows", "storage", "ganviews.cli"),
    ),
    "storage": ((), ("torch", "torchvision", "ganviews")),
    "tasks": ((), ("ganviews.cli", "flows")),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            out.append((node.lineno, base))
            out += [
                (node.lineno, f"{base}.{alias.name}") for alias in node.names if not node.module
            ]
    return out


def violations(package: str) -> list[str]:
    skip, forbidden = RULES[package]
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        for line, module in imported_modules(path):
            hit = [f for f in forbidden if module == f or module.startswith(f + ".")]
            if hit:
                found.append(f"{rel}:{line} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_layering(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch) -> None:
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "bad.py").write_text("def f():\n    import torch.nn\n")
    (tmp_path / "ganviews" / "views").mkdir(parents=True)
    (tmp_path / "ganviews" / "views" / "bad.py").write_text("from ..cli import run\n")
    (tmp_path / "ganviews" / "cli").mkdir()
    (tmp_path / "ganviews" / "cli" / "ok.py").write_text("import prefect\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert violations("storage") == ["storage/bad.py:2 imports torch.nn"]
    assert violations("ganviews") == ["ganviews/views/bad.py:1 imports ganviews.cli"]
