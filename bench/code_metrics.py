"""Measure the code itself: the numbers a reader of this codebase feels first.

Prints, for the project's own Python (the scripts and the ``riskwatch`` package; not the
tests or the benchmarks): how many ``dict[str, Any]`` annotations there are, how many ``.get(``
calls the report and the API make, how many functions run over 50 lines, and the largest
cyclomatic complexity (radon), with where it is.

    .venv/bin/python -m bench.code_metrics [--root PATH]     # or: make metrics
"""

from __future__ import annotations

import argparse
import ast
import re
from dataclasses import dataclass
from pathlib import Path

from radon.complexity import cc_visit

from riskwatch.core.config import PROJECT_ROOT

PACKAGES = ("riskwatch",)
LONG_FUNCTION_LINES = 50
READERS = ("riskwatch/report/reporting.py", "riskwatch/web/app.py", "riskwatch/web/api/routes.py")


@dataclass(frozen=True)
class CodeMetrics:
    any_dicts: int
    gets: dict[str, int]
    long_functions: list[str]
    most_complex: tuple[int, str]


def project_files(root: Path) -> list[Path]:
    files = sorted(root.glob("*.py"))
    for package in PACKAGES:
        files += sorted((root / package).rglob("*.py"))
    return files


def long_functions(path: Path, root: Path) -> list[str]:
    """``file:function (N lines)`` for each function or method longer than LONG_FUNCTION_LINES."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > LONG_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.name} ({length} lines)")
    return found


def measure(root: Path) -> CodeMetrics:
    files = project_files(root)
    texts = {path: path.read_text(encoding="utf-8") for path in files}
    any_dicts = sum(len(re.findall(r"dict\[str, Any\]", text)) for text in texts.values())
    gets = {
        name: (root / name).read_text(encoding="utf-8").count(".get(") for name in READERS if (root / name).exists()
    }
    complexity = [
        (block.complexity, f"{path.relative_to(root)}:{block.name}")
        for path in files
        for block in cc_visit(texts[path])
    ]
    return CodeMetrics(
        any_dicts=any_dicts,
        gets=gets,
        long_functions=[entry for path in files for entry in long_functions(path, root)],
        most_complex=max(complexity),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="the checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    metrics = measure(args.root.resolve())
    print(f"dict[str, Any] annotations: {metrics.any_dicts}")
    print(".get( calls: " + ", ".join(f"{name} {count}" for name, count in metrics.gets.items()))
    print(f"functions over {LONG_FUNCTION_LINES} lines: {len(metrics.long_functions)}")
    for entry in metrics.long_functions:
        print(f"  {entry}")
    print(f"largest cyclomatic complexity: {metrics.most_complex[0]} ({metrics.most_complex[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
