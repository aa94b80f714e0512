"""No function in train/ or sharding/ is over MAX_LINES lines (the def, its decorators, docstring
and body), except the few in ALLOWED, each with its reason."""

from __future__ import annotations

import ast
import pathlib

from tests.helpers import ROOT

MAX_LINES = 60
PACKAGES = ("train", "sharding")
# "path::qualname": why it stays long. Keep it short; a function leaves it when it is split.
ALLOWED: dict[str, str] = {}


def long_functions(root: pathlib.Path, packages=PACKAGES,
                   max_lines: int = MAX_LINES) -> dict[str, int]:
  """{"package/path.py::Class.func.inner": lines} of every function over max_lines, nested
  functions and methods included, in the packages under root (recursively)."""
  found = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      rel = path.relative_to(root).as_posix()

      def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
          if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([child.lineno] + [d.lineno for d in child.decorator_list])
            qualname = prefix + child.name
            if child.end_lineno - first + 1 > max_lines:
              found[f"{rel}::{qualname}"] = child.end_lineno - first + 1
            walk(child, qualname + ".")
          elif isinstance(child, ast.ClassDef):
            walk(child, prefix + child.name + ".")
          else:
            walk(child, prefix)

      walk(ast.parse(path.read_text(encoding="utf-8")), "")
  return found


def test_no_function_in_train_or_sharding_is_over_the_limit():
  found = long_functions(pathlib.Path(ROOT))
  over = {k: n for k, n in found.items() if k not in ALLOWED}
  assert not over, "split these functions (at most %d lines each):\n  %s" % (
      MAX_LINES, "\n  ".join(f"{k}: {n} lines" for k, n in sorted(over.items())))
  stale = sorted(set(ALLOWED) - set(found))
  assert not stale, f"no longer over the limit, drop from ALLOWED: {stale}"


def test_an_over_long_function_is_reported_with_its_length_and_qualname(tmp_path):
  """Catches: a scan that skips methods or subpackages, counts from the def rather than the
  decorator (C.method is 60 lines from its def, 61 with it), leaves a nested function's lines out
  of the function around it (outer is 62 lines, its inner 60), or reports a function of exactly
  the limit."""
  pkg = tmp_path / "train" / "sub"
  pkg.mkdir(parents=True)
  body = "".join(f"    x{i} = {i}\n" for i in range(58))  # def + 58 + return = 60 lines
  (pkg / "m.py").write_text(
      "import functools\n\n\n"
      "def exactly_the_limit():\n" + body.replace("    ", "  ") + "  return 0\n\n\n"
      "class C:\n"
      "  @functools.cache\n"
      "  def method(self):\n" + body + "    return 0\n\n\n"
      "def outer():\n"
      "  def inner():\n" + body + "    return 0\n"
      "  return inner\n", encoding="utf-8")
  (tmp_path / "sharding").mkdir()
  (tmp_path / "sharding" / "short.py").write_text("def f():\n  return 1\n", encoding="utf-8")
  found = long_functions(tmp_path)
  assert found == {"train/sub/m.py::C.method": 61, "train/sub/m.py::outer": 62}
