"""Is each results file current with the code that made it?

A results.json carries a provenance block (train/provenance.py: the commit, whether the tree was
dirty, the command). Its dependencies are the script the command names and everything that
script imports within this repository, followed transitively by parsing import statements (no
execution, so no jax), plus the repository files the command names as flag values (a sweep or
config file, an input results.jsonl) and any repository file path a traced module spells out as
a whole string (the default config file of a script). The result is stale when git says one of
those files changed since the recorded commit (`git diff --name-only COMMIT`, which compares the
commit with the working tree, uncommitted edits included; untracked files count as changed).

Files made before provenance existed carry a block marked {"reconstructed": true, "committed_in":
the commit that last changed the results file}: the code that made them is at or before that
commit, so they are never "current", only "reconstructed" (nothing changed since) or
"reconstructed, stale" (the files listed changed after committed_in).

Statuses: current, stale, dirty (made from a tree with uncommitted edits, nothing changed since
its commit: which edits is unknown), reconstructed, reconstructed, stale, no provenance, unknown
commit (not in HEAD's history), unknown script (the command names no script in this checkout).
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import re
import subprocess
from typing import Iterable, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_LINK = re.compile(r"\]\((results/[^)\s#]*)\)")


@dataclasses.dataclass
class Entry:
  """One results file: where it came from and whether the code it depends on changed since.
  stale: True (a dependency changed), False (current), None (cannot tell)."""
  path: str
  status: str
  commit: Optional[str] = None
  dirty: Optional[bool] = None
  date: Optional[str] = None
  script: Optional[str] = None
  changed: list[str] = dataclasses.field(default_factory=list)
  stale: Optional[bool] = None


@dataclasses.dataclass
class Row:
  """One README table row that links results files; state: current / stale / unverified."""
  line: int
  topic: str
  files: list[str]
  state: str


# --- which files, and what their provenance says ------------------------------------------------

def find_results(root: str) -> list[str]:
  """Repository-relative results/**/results.json, plus results.jsonl of folders without one."""
  found = []
  for path in sorted(glob.glob(os.path.join(root, "results", "**", "results.json*"),
                            recursive=True)):
    rel = os.path.relpath(path, root)
    if rel.endswith("results.json"):
      found.append(rel)
    elif rel.endswith("results.jsonl") and not os.path.exists(path[:-1]):
      found.append(rel)
  return found


def read_provenance(root: str, rel: str) -> Optional[dict]:
  """The file's provenance block (the first row's, for a results.jsonl), or None."""
  with open(os.path.join(root, rel)) as f:
    if rel.endswith(".jsonl"):
      first = f.readline()
      record = json.loads(first) if first.strip() else {}
    else:
      record = json.load(f)
  block = record.get("provenance") if isinstance(record, dict) else None
  return block if isinstance(block, dict) else None


def _existing(root: str, rel: str) -> Optional[str]:
  rel = os.path.normpath(rel)
  if rel.startswith("..") or os.path.isabs(rel):
    return None
  return rel if os.path.isfile(os.path.join(root, rel)) else None


def module_file(root: str, module: str) -> Optional[str]:
  """a.b.c -> a/b/c.py or a/b/c/__init__.py if it is in the repository, else None."""
  base = module.replace(".", "/")
  return _existing(root, base + ".py") or _existing(root, base + "/__init__.py")


def _path_in_repo(root: str, path: str) -> Optional[str]:
  """A script path as recorded (absolute, maybe from another checkout) -> repository-relative:
  the longest tail of the path that names a file here."""
  parts = path.replace("\\", "/").split("/")
  for i in range(len(parts)):
    found = _existing(root, "/".join(p for p in parts[i:] if p))
    if found:
      return found
  return None


def script_of(root: str, block: dict) -> Optional[str]:
  """The script a provenance block's command (or argv) ran, repository-relative, or None."""
  if block.get("command"):
    tokens = str(block["command"]).split()
    if "-m" in tokens[:-1]:
      return module_file(root, tokens[tokens.index("-m") + 1])
    scripts = [t for t in tokens[1:] if t.endswith(".py") and not t.startswith("-")]
    return _path_in_repo(root, scripts[0]) if scripts else None
  argv = block.get("argv")
  if isinstance(argv, list) and argv:
    return _path_in_repo(root, str(argv[0]))
  return None


def command_files(root: str, block: dict) -> list[str]:
  """Repository files named as flag values in the command: --sweep=F, --rows=label=F:mode."""
  found = set()
  for token in str(block.get("command") or "").split():
    for piece in re.split(r"[=:]", token):
      hit = _existing(root, piece) if piece and not piece.startswith("-") else None
      if hit:
        found.add(hit)
  return sorted(found)


# --- what a script depends on -------------------------------------------------------------------

def _imported_modules(tree: ast.AST, package: str) -> Iterable[str]:
  """Every module an import statement anywhere in the tree (function bodies too) may load:
  `from a.b import c` yields a.b and a.b.c (c may be a submodule)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        parts = package.split(".") if package else []
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
      else:
        base = node.module or ""
      if base:
        yield base
      yield from (f"{base}.{alias.name}" if base else alias.name for alias in node.names)


def direct_dependencies(root: str, rel: str) -> set[str]:
  """The repository files one Python file loads: its imports' modules and every package
  __init__.py on their way, plus string constants that spell a repository file's path."""
  with open(os.path.join(root, rel)) as f:
    tree = ast.parse(f.read(), filename=rel)
  parts = rel[:-3].split("/")
  package = ".".join(parts[:-1])  # a/b/c.py and a/b/__init__.py both sit in package a.b
  found = set()
  for module in _imported_modules(tree, package):
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
      hit = module_file(root, ".".join(parts[:i]))
      if hit:
        found.add(hit)
  for node in ast.walk(tree):
    # A default config file named as a flag's default; not results files (outputs, not code).
    if (isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value
        and len(node.value) < 300 and not node.value.startswith("results/")):
      hit = _existing(root, node.value)
      if hit:
        found.add(hit)
  found.discard(rel)
  return found


def dependencies(root: str, starts: Iterable[str], cache: Optional[dict] = None) -> list[str]:
  """The files reachable from `starts` through direct_dependencies (Python files only are
  parsed; other files are leaves), sorted."""
  cache = {} if cache is None else cache
  seen, todo = set(), list(starts)
  while todo:
    rel = todo.pop()
    if rel in seen:
      continue
    seen.add(rel)
    if rel.endswith(".py"):
      if rel not in cache:
        cache[rel] = direct_dependencies(root, rel)
      todo.extend(cache[rel] - seen)
  return sorted(seen)


# --- git ----------------------------------------------------------------------------------------

def _git(root: str, *args: str) -> Optional[str]:
  try:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout if out.returncode == 0 else None


class Git:
  """The git answers this module needs, each asked once: HEAD's history, the untracked files,
  and per commit the files that differ between it and the working tree."""

  def __init__(self, root: str):
    self.root = root
    self.history = set((_git(root, "rev-list", "HEAD") or "").split())
    self.untracked = set((_git(root, "ls-files", "--others", "--exclude-standard") or "").split())
    self._changed: dict[str, set[str]] = {}
    self._same: dict[tuple[str, str], bool] = {}
    self._dumps: dict[str, Optional[str]] = {}

  def full(self, commit: str) -> Optional[str]:
    """The full hash of a (maybe abbreviated) commit in HEAD's history, else None."""
    if commit in self.history:
      return commit
    matches = [c for c in self.history if c.startswith(commit)] if len(commit) >= 7 else []
    return matches[0] if len(matches) == 1 else None

  def changed_since(self, commit: str) -> set[str]:
    """Files that differ between `commit` and the working tree, untracked ones included."""
    if commit not in self._changed:
      out = _git(self.root, "diff", "--name-only", "--no-renames", commit, "--")
      self._changed[commit] = set((out or "").splitlines()) | self.untracked
    return self._changed[commit]

  def code_changed(self, commit: str, paths: Iterable[str]) -> list[str]:
    """Of `paths` (which differ from `commit`), those whose code differs: a Python file whose
    only edits are to docstrings or comments is the same code. Old texts: one git cat-file."""
    paths = sorted(paths)
    todo = [p for p in paths if p.endswith(".py") and (commit, p) not in self._same]
    for path, old in zip(todo, self._blobs([f"{commit}:{p}" for p in todo])):
      now = self._dump(self._read(path))
      self._same[(commit, path)] = now is not None and self._dump(old) == now
    return [p for p in paths if not self._same.get((commit, p), False)]

  def _dump(self, source: Optional[str]) -> Optional[str]:
    """_code_dump, once per distinct text (a file is compared against many commits)."""
    if source is None:
      return None
    if source not in self._dumps:
      self._dumps[source] = _code_dump(source)
    return self._dumps[source]

  def _read(self, rel: str) -> Optional[str]:
    try:
      with open(os.path.join(self.root, rel)) as f:
        return f.read()
    except OSError:
      return None

  def _blobs(self, specs: list[str]) -> list[Optional[str]]:
    """The text of each `commit:path` (None where it does not exist), in one git call."""
    if not specs:
      return []
    try:
      out = subprocess.run(["git", "cat-file", "--batch"], cwd=self.root, capture_output=True,
                           input="\n".join(specs).encode() + b"\n", timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
      return [None] * len(specs)
    texts, at = [], 0
    for _ in specs:
      end = out.index(b"\n", at)
      header = out[at:end].split()
      if len(header) == 3 and header[1] == b"blob":
        size = int(header[2])
        texts.append(out[end + 1:end + 1 + size].decode("utf-8", "replace"))
        at = end + 1 + size + 1
      else:  # "<spec> missing": the file did not exist at that commit
        texts.append(None)
        at = end + 1
    return texts


def _code_dump(source: str) -> Optional[str]:
  """The syntax tree without docstrings (comments are not in it), or None if it does not parse."""
  try:
    tree = ast.parse(source)
  except SyntaxError:
    return None
  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)):
      node.body = body[1:] or [ast.Pass()]
  return ast.dump(tree)


# --- the status of one file, and of the README's rows -------------------------------------------

def entry_for(root: str, rel: str, git: Git, cache: dict) -> Entry:
  """The status of one results file (see the module docstring for the values)."""
  block = read_provenance(root, rel)
  if block is None:
    return Entry(rel, "no provenance")
  reconstructed = bool(block.get("reconstructed"))
  recorded = block.get("committed_in") if reconstructed else block.get("commit")
  entry = Entry(rel, "", commit=recorded, dirty=block.get("dirty"),
                date=block.get("date") or block.get("committed_date"))
  commit = git.full(str(recorded)) if recorded else None
  if commit is None:
    entry.status = "unknown commit"
    return entry
  script = script_of(root, block)
  named = block.get("command") or block.get("argv")
  if script is None:
    entry.status = "reconstructed" if reconstructed else "unknown script"
    entry.stale = True if (named and not reconstructed) else None
    entry.changed = [f"script of {named!r} not in this checkout"] if named else []
    return entry
  entry.script = script
  deps = set(dependencies(root, [script, *command_files(root, block)], cache)) - {rel}
  entry.changed = git.code_changed(commit, deps & git.changed_since(commit))
  if reconstructed:
    entry.status = "reconstructed, stale" if entry.changed else "reconstructed"
    entry.stale = True if entry.changed else None
  elif entry.changed:
    entry.status, entry.stale = "stale", True
  elif entry.dirty:
    entry.status, entry.stale = "dirty", None
  else:
    entry.status, entry.stale = "current", False
  return entry


def collect(root: str = REPO_ROOT) -> list[Entry]:
  """Every results file's Entry, in path order."""
  git, cache = Git(root), {}
  return [entry_for(root, rel, git, cache) for rel in find_results(root)]


def readme_rows(root: str, readme: str = "README.md") -> list[tuple[int, str, list[str]]]:
  """(line number, topic, linked results files) of every README table row that links results;
  a link to a folder stands for the results files under it."""
  rows = []
  with open(os.path.join(root, readme)) as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines, start=1):
    if not line.startswith("|"):
      continue
    files = []
    for target in README_LINK.findall(line):
      if os.path.isdir(os.path.join(root, target)):
        inside = find_results(root)
        files += [p for p in inside if p.startswith(target.rstrip("/") + "/")]
      else:
        files.append(os.path.normpath(target))
    if files:
      topic = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line.split("|")[1]).strip()
      rows.append((number, topic, sorted(set(files))))
  return rows


def row_state(files: list[str], by_path: dict[str, Entry]) -> str:
  """stale if any linked file is stale (or missing), current if all are current, else
  unverified."""
  entries = [by_path.get(f) for f in files]
  if any(e is None or e.stale for e in entries):
    return "stale"
  return "current" if all(e.status == "current" for e in entries) else "unverified"


def rows(root: str, entries: list[Entry]) -> list[Row]:
  """The README's results rows with their state."""
  by_path = {e.path: e for e in entries}
  return [Row(n, topic, files, row_state(files, by_path))
          for n, topic, files in readme_rows(root)]


# --- output -------------------------------------------------------------------------------------

def summary(entries: list[Entry]) -> dict[str, int]:
  """{status: how many files}."""
  counts: dict[str, int] = {}
  for e in entries:
    counts[e.status] = counts.get(e.status, 0) + 1
  return dict(sorted(counts.items()))


def as_json(entries: list[Entry], table: list[Row]) -> str:
  return json.dumps({"summary": summary(entries),
                     "files": [dataclasses.asdict(e) for e in entries],
                     "readme_rows": [dataclasses.asdict(r) for r in table]}, indent=2)


def as_text(entries: list[Entry], table: list[Row]) -> str:
  """A table of the files, the README rows, and the counts."""
  width = max([len(e.path) for e in entries] + [4])
  out = [f"{'file':<{width}}  {'commit':<8}  {'dirty':<5}  {'date':<10}  status"]
  for e in entries:
    dirty = "-" if e.dirty is None else ("yes" if e.dirty else "no")
    changed = f" ({', '.join(e.changed[:6])}{', ...' if len(e.changed) > 6 else ''})" \
        if e.changed else ""
    out.append(f"{e.path:<{width}}  {(e.commit or 'none')[:8]:<8}  {dirty:<5}  "
               f"{(e.date or '-')[:10]:<10}  {e.status}{changed}")
  out += ["", "README rows:"]
  for r in table:
    out.append(f"  line {r.line:>3}  {r.state:<10}  {r.topic}: {', '.join(r.files)}")
  out += ["", "files: " + ", ".join(f"{n} {s}" for s, n in summary(entries).items()),
          "README rows: " + ", ".join(
              f"{sum(r.state == s for r in table)} {s}" for s in ("current", "unverified", "stale"))]
  return "\n".join(out)
