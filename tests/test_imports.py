"""The import graph: layers point one way, and no module imports itself back.

Catches the bug where a lower layer reaches up (model/interop/hf_tokenizer.py importing
train.data.tokenizer, so loading a Hugging Face checkpoint dragged in the training package) and import
cycles (model.attention <-> model.flash / model.kernels through a global registry, which only
worked because attention imported them late, inside a function).

Layers, lowest first: model, sharding, train, experiments. A module may import its own layer and
the ones below it, never one above: model imports neither sharding, train nor experiments;
sharding neither train nor experiments; train not experiments.

Pure ast, no jax: every `import` and `from ... import` in every .py file counts, at module level
or inside a function (a late import hides a cycle from Python, not from the design). An import
points at the deepest project module it names: `from model import flash` -> model.flash,
`from model.attention import MASK_VALUE` -> model.attention. The implicit import of a parent
package's __init__ is not an edge (a package re-exporting its submodules is not a cycle).
"""

from __future__ import annotations

import ast
import os
from typing import Iterator, NamedTuple, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("model", "sharding", "train", "experiments")  # lowest first


class Import(NamedTuple):
  path: str  # relative to ROOT
  line: int
  source: str  # importing module, dotted
  target: str  # imported project module, dotted


def _module_name(rel_path: str) -> str:
  parts = rel_path[:-len(".py")].split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, str]:
  """Dotted module name -> path relative to ROOT, for every .py file under the layers."""
  modules = {}
  for layer in LAYERS:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, layer)):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
      for name in sorted(filenames):
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
          modules[_module_name(rel)] = rel
  return modules


def _resolve(name: str, modules: dict[str, str]) -> Optional[str]:
  """The deepest project module that `name` (dotted) or one of its prefixes names, or None."""
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    candidate = ".".join(parts[:n])
    if candidate in modules:
      return candidate
  return None


def _imports_of(module: str, rel_path: str, modules: dict[str, str]) -> Iterator[Import]:
  with open(os.path.join(ROOT, rel_path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=rel_path)
  is_package = rel_path.endswith("__init__.py")
  for node in ast.walk(tree):
    names: list[str] = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against the importing module's package
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      # `from a import b` names module a.b when b is one, else a name inside a.
      names = [f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names]
    for name in names:
      target = _resolve(name, modules)
      if target is not None and target != module:
        yield Import(rel_path, node.lineno, module, target)


def import_graph() -> list[Import]:
  modules = project_modules()
  return [imp for module, rel in modules.items() for imp in _imports_of(module, rel, modules)]


def _layer(module: str) -> int:
  return LAYERS.index(module.split(".")[0])


def layer_violations(imports: list[Import]) -> list[str]:
  return [f"{imp.path}:{imp.line} -> {imp.target}" for imp in imports
          if _layer(imp.target) > _layer(imp.source)]


def find_cycle(imports: list[Import]) -> Optional[list[str]]:
  """One cycle as its path of modules (first == last), or None; depth-first with three colours."""
  edges: dict[str, list[str]] = {}
  for imp in imports:
    edges.setdefault(imp.source, []).append(imp.target)
  on_path: list[str] = []
  done: set[str] = set()

  def visit(node: str) -> Optional[list[str]]:
    if node in on_path:
      return on_path[on_path.index(node):] + [node]
    if node in done:
      return None
    on_path.append(node)
    for nxt in sorted(set(edges.get(node, ()))):
      cycle = visit(nxt)
      if cycle:
        return cycle
    on_path.pop()
    done.add(node)
    return None

  for start in sorted(edges):
    cycle = visit(start)
    if cycle:
      return cycle
  return None


# Rooms of train/, lowest first. A module may import its own room and lower ones: data/ only the
# base modules (files, config), the core (modules directly in train/) data/ too, align/ and
# studies/ the core and data/ but not each other (a study that needs the alignment task would
# name it through the core, not reach sideways).
TRAIN_BASE = ("train.files", "train.config")
TRAIN_ROOMS = {"base": 0, "data": 1, "core": 2, "align": 3, "studies": 3}


def train_room(module: str) -> str:
  if module in TRAIN_BASE:
    return "base"
  parts = module.split(".")
  return parts[1] if len(parts) > 2 else "core"


def room_violations(imports: list[Import]) -> list[str]:
  out = []
  for imp in imports:
    if not (imp.source.startswith("train.") and imp.target.startswith("train.")):
      continue
    src, dst = train_room(imp.source), train_room(imp.target)
    if src != dst and TRAIN_ROOMS[dst] >= TRAIN_ROOMS[src]:
      out.append(f"{imp.path}:{imp.line} ({src}) -> {imp.target} ({dst})")
  return out


def is_script(module: str) -> bool:
  """experiments.X for a file experiments/X.py: a script, not a config and not the package."""
  parts = module.split(".")
  return len(parts) == 2 and parts[0] == "experiments" and parts[1] != "configs"


def script_violations(imports: list[Import]) -> list[str]:
  """A script importing another script (a library dressed as a script), or a package module
  importing anything of experiments/."""
  out = []
  for imp in imports:
    if is_script(imp.source) and is_script(imp.target):
      out.append(f"{imp.path}:{imp.line} script imports script {imp.target}")
    if imp.source.split(".")[0] != "experiments" and imp.target.split(".")[0] == "experiments":
      out.append(f"{imp.path}:{imp.line} package module imports {imp.target}")
  return out


def scripts_without_main() -> list[str]:
  """experiments/*.py files with no `if __name__ == "__main__":` block."""
  out = []
  for module, rel in project_modules().items():
    if not is_script(module):
      continue
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=rel)
    if not any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
      out.append(rel)
  return out


def test_the_graph_sees_the_project():
  # Guards the test itself: a walker that found no files or no edges would pass vacuously.
  imports = import_graph()
  assert "model.attention" in project_modules()
  assert any(i.source == "train.step" and i.target.startswith("model.") for i in imports)


def test_no_module_imports_a_higher_layer():
  violations = layer_violations(import_graph())
  assert not violations, (
      f"imports point up the layers {' < '.join(LAYERS)}:\n  " + "\n  ".join(violations))


def test_no_import_cycles():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_function_level_import_counts(tmp_path, monkeypatch):
  # A late import inside a function hides a cycle from Python at import time; not from this test.
  for rel, text in {"model/__init__.py": "", "model/a.py": "def f():\n  from model import b\n",
                    "model/b.py": "from model.a import f\n",
                    "train/__init__.py": "", "model/c.py": "import train\n"}.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
  monkeypatch.setitem(globals(), "ROOT", str(tmp_path))  # the walker reads the module's ROOT
  imports = import_graph()
  assert find_cycle(imports) in (["model.a", "model.b", "model.a"],
                                 ["model.b", "model.a", "model.b"])
  assert layer_violations(imports) == [f"{os.path.join('model', 'c.py')}:1 -> train"]


def test_train_rooms_point_one_way():
  violations = room_violations(import_graph())
  assert not violations, "imports against the order of train/'s rooms:\n  " + "\n  ".join(violations)


def test_no_script_imports_a_script():
  violations = script_violations(import_graph())
  assert not violations, "\n  ".join(violations)


def test_every_script_has_a_main():
  assert scripts_without_main() == [], "experiments/ holds scripts only"


def test_the_house_rules_catch_what_they_name(tmp_path, monkeypatch):
  # Guards the three checks above: each fixture breaks one rule and must be reported.
  for rel, text in {"train/__init__.py": "", "train/files.py": "",
                    "train/loop.py": "from train.align import sft\n",  # core reaching up
                    "train/align/__init__.py": "", "train/align/sft.py": "from train import files\n",
                    "train/studies/__init__.py": "", "train/studies/x.py": "from train.align import sft\n",
                    "experiments/__init__.py": "",
                    "experiments/a.py": "from experiments import b\nif __name__ == '__main__':\n  pass\n",
                    "experiments/b.py": "def main():\n  pass\n",
                    "model/__init__.py": "", "sharding/__init__.py": ""}.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
  monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
  imports = import_graph()
  assert [v.split(" ")[0] for v in room_violations(imports)] == [
      os.path.join("train", "loop.py") + ":1", os.path.join("train", "studies", "x.py") + ":1"]
  assert script_violations(imports) == [
      f"{os.path.join('experiments', 'a.py')}:1 script imports script experiments.b"]
  assert scripts_without_main() == [os.path.join("experiments", "b.py")]
