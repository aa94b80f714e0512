"""What every experiment script shares: process set-up, one-line error reporting, profiling flags."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from typing import Callable, Optional, Union


def setup() -> None:
  """Quiet, predictable logs: absl INFO chatter from orbax off, warnings kept."""
  logging.getLogger("absl").setLevel(logging.WARNING)
  for name in ("orbax", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.ERROR)


# XLA's CPU backend (jax 0.10) hands dots of a few rows, such as a speculative verification pass
# over gamma + 1 tokens, to YNNPACK fusions, which read a weight-bound model's matrices slower
# than XLA's own dot does (docs/inference.md has the side-by-side measurement). Decoding scripts
# turn them off unless told otherwise; one-row dots (a plain decode step) never use them.
NO_YNN_DOTS = "--xla_cpu_experimental_ynn_fusion_type="


def use_xla_flag(flag: str) -> None:
  """Appends `--name=value` to XLA_FLAGS unless the user already set that name. Must run before
  jax creates its backend (the first computation), which is when XLA reads the variable."""
  current = os.environ.get("XLA_FLAGS", "")
  if flag.split("=")[0] not in current:
    os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()


def prefer_xla_dots() -> None:
  """NO_YNN_DOTS where JAX will run on the CPU: only when no GPU or TPU plugin is installed, so
  an accelerator's XLA, possibly newer, never meets a CPU flag it may have dropped (an unknown
  flag in XLA_FLAGS aborts the process)."""
  import importlib.util

  plugins = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_rocm7_plugin", "libtpu")
  if not any(importlib.util.find_spec(name) for name in plugins):
    use_xla_flag(NO_YNN_DOTS)


def fail(error: Union[Exception, str]) -> None:
  """Prints `error: <one line>` and exits with status 2, without a traceback."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(2)


# errnos of a full disk (or a file size limit, ulimit -f / RLIMIT_FSIZE), and of a path the
# user may not write, with what to do about each.
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_line(error: OSError) -> str:
  """One line for an OSError from the user's environment: the path, the reason, the errno by
  number and name, and what to change. `/w/config.json: File too large [errno 27 EFBIG]; free
  space there (or raise the file size limit, ulimit -f), then rerun`."""
  reason = (error.strerror or str(error) or type(error).__name__).strip().splitlines()[0]
  where = "" if error.filename is None else f"{error.filename}: "
  if error.filename2 is not None:
    where = f"{error.filename} -> {error.filename2}: "
  name = errno.errorcode.get(error.errno) if isinstance(error.errno, int) else None
  code = f" [errno {error.errno} {name}]" if name else ""
  if error.errno in _FULL:
    hint = "; free space there (or raise the file size limit, ulimit -f), then rerun"
  elif error.errno in _DENIED:
    hint = "; make it writable (or readable) for this user, or choose another path"
  elif error.errno == errno.ENOENT:
    hint = "; check the path"
  else:
    hint = ""
  return f"{where}{reason}{code}{hint}"


def _one_line_os_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """main, with any OSError that reaches it (a full disk, a file size limit, a folder it may not
  write: the user's environment, not a bug) printed as one `error:` line, exit status 2."""

  def guarded(argv: list[str]) -> None:
    try:
      return main(argv)
    except OSError as e:
      fail(os_error_line(e))

  return guarded


def format_summary(summary: dict) -> str:
  return json.dumps(summary, default=str)


# --- Profiling: one flag away in every script -------------------------------------------------
# --profile (every script) traces the whole of main(); --profile_steps=A:B (scripts with a train
# loop) traces steps A to B only, so compilation and warm-up stay out of the trace. Traces are
# TensorBoard profile plugin directories (plugins/profile/<run>/*.xplane.pb and a Perfetto
# *.trace.json.gz), under <workdir, out or results_dir>/profile.

_PROFILE_STEPS_HELP = (
    "Trace train steps A to B (A:B, counted from 1 like the loop's step numbers) with the JAX "
    "profiler into <workdir>/profile; view in TensorBoard or ui.perfetto.dev. Empty: no trace.")


def parse_steps_range(text: str) -> Optional[tuple[int, int]]:
  """'A:B' -> (A, B) with 1 <= A <= B; '' -> None. ValueError with one line otherwise."""
  if not text:
    return None
  first, sep, last = text.partition(":")
  if not (sep and first.strip().isdigit() and last.strip().isdigit()):
    raise ValueError("expected A:B, two step numbers")
  a, b = int(first), int(last)
  if not 1 <= a <= b:
    raise ValueError("expected A:B with 1 <= A <= B")
  return a, b


def define_profile_steps_flag(flag_values=None) -> None:
  """--profile_steps, for a script whose main runs train/loop.py's run_steps."""
  from absl import flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  flags.DEFINE_string("profile_steps", "", _PROFILE_STEPS_HELP, flag_values=flag_values)

  def valid(text: str) -> bool:
    try:
      parse_steps_range(text)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None  # absl prefixes "flag --NAME=VALUE: "
    return True

  flags.register_validator("profile_steps", valid, flag_values=flag_values)


def profile_steps() -> Optional[tuple[int, int]]:
  """The parsed --profile_steps of this script (validated at parse time), or None."""
  from absl import flags

  fv = flags.FLAGS
  return parse_steps_range(fv.profile_steps) if "profile_steps" in fv else None


def profile_dir() -> str:
  """Where --profile writes: <first of --workdir, --out, --results_dir that is set>/profile."""
  from absl import flags

  fv = flags.FLAGS
  for name in ("workdir", "out", "results_dir"):
    if name in fv and fv[name].value:
      return os.path.join(fv[name].value, "profile")
  return "profile"


def _traced(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """main, traced from start to end by the JAX profiler when --profile is set."""
  from absl import flags

  def traced(argv: list[str]) -> None:
    if not flags.FLAGS.profile:
      return main(argv)
    import jax  # only now: a multi-host script must initialise jax.distributed first otherwise

    logdir = profile_dir()
    jax.profiler.start_trace(logdir)
    try:
      return main(argv)
    finally:
      jax.profiler.stop_trace()
      print(f"profile: {logdir}", file=sys.stderr, flush=True)

  return traced


def default_compilation_cache() -> str:
  """~/.cache/llmlab/jax (or under $XDG_CACHE_HOME): one cache for every run of this user."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "llmlab", "jax")


COMPILATION_CACHE_MAX_BYTES = 2 << 30  # least recently used entries go first beyond this


def use_compilation_cache(directory: str) -> None:
  """Points JAX's persistent compilation cache at `directory` ('' leaves it off), unless
  JAX_COMPILATION_CACHE_DIR is set, which JAX reads itself and which wins. A rerun, a resumed run
  or a sweep point of an already-compiled shape then loads its programs instead of compiling them
  (most of a tiny run's time). Setting the option compiles nothing, so a multi-host script may
  still initialise jax.distributed afterwards."""
  if not directory or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax

  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)


def _cached(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """main, with --compilation_cache applied first."""
  from absl import flags

  def cached(argv: list[str]) -> None:
    use_compilation_cache(flags.FLAGS.compilation_cache)
    return main(argv)

  return cached


class UsageError(ValueError):
  """A command line this script cannot run: an unknown flag or setting, or a value of the wrong
  type. Its message is one line; run() prints it as `error: ...` and exits 2."""


_TYPE_NAMES = {int: "an int", float: "a float", bool: "a bool (true or false)", str: "a string"}


def _config_flags(flag_values) -> dict:
  try:
    from ml_collections.config_flags import config_flags
  except ImportError:  # a script without config files, where ml_collections is not installed
    return {}
  return {name: flag_values[name] for name in flag_values
          if config_flags.is_config_flag(flag_values[name])}


def _dotted_keys(node, prefix: str) -> list[str]:
  import ml_collections

  out = []
  for key in node.keys():
    value = node[key]
    out.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out += _dotted_keys(value, prefix + key + ".")
  return out


def _parses_as(text: str, kind: type) -> bool:
  if kind is bool:
    return text.lower() in ("true", "false", "1", "0")
  if kind in (int, float):
    try:
      kind(text)
    except ValueError:
      return False
  return True


def _config_path(flag, argv: list[str]):
  """The config file argv names for a config flag (its default when argv names none); a config
  dict flag's default is the config itself."""
  path = getattr(flag, "default_unparsed", None)  # unset when argv names the file
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag.name}="):
      path = arg.split("=", 1)[1]
    elif arg == f"--{flag.name}" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _missing_config_file(flag_values, argv: list[str]) -> Optional[str]:
  """One line for a config flag whose file does not exist, None when every one does. Checked
  before parsing: ml_collections applies --config.KEY=VALUE overrides to the config it failed to
  load, and that raises a chain of tracebacks instead of saying the file is missing."""
  for name, flag in _config_flags(flag_values).items():
    path = _config_path(flag, argv)
    file = path.split(":", 1)[0] if isinstance(path, str) else None
    if file is not None and not os.path.isfile(file):
      where = "" if os.path.isabs(file) else f" (relative paths start at {os.getcwd()})"
      return f"--{name}={path}: no such config file{where}"
  return None


def _load_config(flag, argv: list[str]):
  """The config a config flag would load from argv, without its overrides; None if unreadable."""
  from ml_collections.config_flags import config_flags

  path = _config_path(flag, argv)
  if not isinstance(path, str):
    return path  # a config dict flag: the default is the config itself
  try:
    config = config_flags.ConfigFileFlagParser(flag.name).parse(path)
  except Exception:  # noqa: BLE001 - the caller falls back to absl's own message
    return None
  # A file that failed to load comes back as an object that raises on every access.
  return None if type(config).__name__ == "_ErrorConfig" else config


def _explain_override(argv: list[str], flag_values) -> Optional[str]:
  """One line about the first --config.KEY=VALUE in argv that names no setting or whose value
  does not parse as the setting's type; None when every override is fine."""
  import difflib

  for name, flag in _config_flags(flag_values).items():
    from ml_collections.config_flags import config_path

    config = _load_config(flag, argv)
    if config is None:
      continue
    keys = _dotted_keys(config, "")
    for arg in argv[1:]:
      if not arg.startswith(f"--{name}."):
        continue
      dotted, _, value = arg[len(name) + 3:].partition("=")
      if dotted not in keys:
        close = difflib.get_close_matches(dotted, keys, n=1)
        hint = f" (did you mean {name}.{close[0]}?)" if close else ""
        return f"unknown setting {name}.{dotted}{hint}"
      kind = config_path.get_type(dotted, config)
      if kind in _TYPE_NAMES and not _parses_as(value, kind):
        return f"{name}.{dotted}={value}: expected {_TYPE_NAMES[kind]}"
  return None


def _explain(argv: list[str], error: Exception, flag_values) -> str:
  """One line for a failure of absl / ml_collections flag parsing."""
  import difflib

  from absl import flags

  about_override = _explain_override(argv, flag_values)
  if about_override:
    return about_override
  if isinstance(error, flags.UnrecognizedFlagError):
    names = [n for n in flag_values if "." not in n]
    close = difflib.get_close_matches(error.flagname, names, n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return f"unknown flag --{error.flagname}{hint}"
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  if "must have a value other than None" in line:  # absl's words for a required flag left out
    return line.split(": ", 1)[-1].replace("must have a value other than None", "is required")
  return line


def _overrides_stripped(argv: list[str]) -> list[str]:
  return [a for a in argv if not (a.startswith("--") and "." in a.split("=", 1)[0])]


# absl's help flags: each prints the flags and exits while the command line is parsed.
HELP_FLAGS = ("--help", "-help", "--helpshort", "--helpfull", "--helpxml", "-?")


CONFIG_FLAG_NAMES = ("config", "sweep")  # every config-file flag the scripts define


def _asks_help(argv: list[str]) -> bool:
  return any(a in HELP_FLAGS for a in argv[1:])


def define(define_flags: Callable[[], None], argv: list[str]) -> None:
  """Runs define_flags with argv's `--config.KEY=VALUE` overrides hidden from it.

  ml_collections parses a config flag's default (and applies sys.argv's overrides to it) at
  definition time, so a typo there would raise before any handler could turn it into one line.
  parse_flags then applies the overrides to the config the flag names, default or not.

  For --help the default config file is not loaded at all (ml_collections leaves the default
  unparsed when the command line names the flag: --config, or a sweep study's --sweep): config
  files import model.config and with it jax, 1.5 s of a 2 s `--help`, to list flags whose text
  does not depend on them.
  """
  saved = sys.argv
  unloaded = [f"--{name}=" for name in CONFIG_FLAG_NAMES] if _asks_help(argv) else []
  sys.argv = _overrides_stripped(argv) + unloaded
  try:
    define_flags()
  finally:
    sys.argv = saved


# The repository root: relative config paths (every script's default --config) are found from
# here when they do not exist from the working directory.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def from_root(path: str) -> str:
  """A relative config path (`FILE` or ml_collections' `FILE:ARG`) that does not exist from the
  working directory but does from the repository root, made absolute; any other path as given."""
  file, sep, arg = path.partition(":")
  if not file or os.path.isabs(file) or os.path.exists(file):
    return path
  rooted = os.path.join(ROOT, file)
  return rooted + sep + arg if os.path.exists(rooted) else path


def _rooted_config_paths(argv: list[str], flag_values) -> list[str]:
  """argv with each config flag's file (named, or its default when not named) found from the
  repository root where the working directory does not have it (from_root)."""
  argv = list(argv)
  for name, flag in _config_flags(flag_values).items():
    named = [i for i, a in enumerate(argv) if a.startswith(f"--{name}=")]
    for i in named:
      argv[i] = f"--{name}={from_root(argv[i].split('=', 1)[1])}"
    default = getattr(flag, "default_unparsed", None)
    if (not named and f"--{name}" not in argv and isinstance(default, str)
        and from_root(default) != default):
      argv.insert(1, f"--{name}={from_root(default)}")
  return argv


def parse_flags(argv: list[str], flag_values=None) -> list[str]:
  """absl's flag parsing of argv (flags defined by define()); returns the arguments left over.

  Raises UsageError with one line: `unknown flag --workdirr (did you mean --workdir?)`,
  `unknown setting config.train.stepz (did you mean config.train.steps?)`,
  `config.train.steps=abc: expected an int`, or absl's own first line.
  """
  from absl import flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  argv = _rooted_config_paths(argv, flag_values)
  for name, flag in _config_flags(flag_values).items():
    named = any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)
    if not named and any(a.startswith(f"--{name}.") for a in argv):
      # Overrides of the default config: name it, so that they are applied at parse time.
      argv.insert(1, f"--{name}={flag.default_unparsed}")
  missing = _missing_config_file(flag_values, argv)
  if missing:
    raise UsageError(missing)
  saved = sys.argv
  sys.argv = argv  # ml_collections reads the overrides from sys.argv, not from its argument
  try:
    rest = flag_values(argv)
  except Exception as e:  # noqa: BLE001 - absl, ml_collections and the config file raise anything
    if not _only_printing_config(e, flag_values):
      raise UsageError(_explain(argv, e, flag_values)) from None
    rest = argv[:1]
  finally:
    sys.argv = saved
  for name, flag in _config_flags(flag_values).items():
    if type(flag.value).__name__ == "_ErrorConfig":  # ml_collections defers a missing file's error
      raise UsageError(f"--{name}={flag.config_filename}: no such config file")
  return rest


def _only_printing_config(error: Exception, flag_values) -> bool:
  """Whether a parse failed only for a required flag (--workdir) left out of a --print_config
  command line, which reads no workdir. absl has set every flag's value before it validates."""
  from absl import flags

  return ("print_config" in flag_values and bool(flag_values["print_config"].value)
          and isinstance(error, flags.IllegalFlagValueError)
          and "must have a value other than None" in str(error))


# --- --print_config: every script with a config flag -------------------------------------------

def _override_keys(name: str, argv: list[str]) -> list[str]:
  """The dotted keys argv sets on config flag `name`: --config.train.steps=7 -> train.steps."""
  return [a[len(name) + 3:].split("=", 1)[0] for a in argv if a.startswith(f"--{name}.")]


def _printing_config(main: Callable[[list[str]], None],
                     argv: list[str]) -> Callable[[list[str]], None]:
  """main, unless --print_config is set: then each config flag's resolved tree is printed
  (train/config_tree.py: every field, its value and its origin) and the script exits 0."""
  from absl import flags

  def maybe_print(rest: list[str]) -> None:
    fv = flags.FLAGS
    if "print_config" not in fv or not fv.print_config:
      return main(rest)
    from train import config_tree

    for name, flag in _config_flags(fv).items():
      source = getattr(flag, "config_filename", None) or "a config dict"
      print(f"# --{name}: {source}")
      print(config_tree.render(flag.value, _override_keys(name, argv)), flush=True)

  return maybe_print


def _declare_key_flags(defined_before: set[str]) -> None:
  """Makes the flags defined since `defined_before` key flags of the script, so its --help lists
  them: absl's --help shows only the main module's key flags, and flags defined from train/
  modules (define_stage_flags, define_profile_steps_flag, --profile) would appear under
  --helpfull alone. A config's --config.KEY overrides stay out (--print_config lists them)."""
  from absl import flags

  fv = flags.FLAGS
  main_module = sys.argv[0]  # absl's name for __main__ (_helpers.get_module_object_and_name)
  for name in fv:
    if name not in defined_before and "." not in name:
      fv.register_key_flag_for_module(main_module, fv[name])


def _workdir_usable(value: Optional[str]) -> bool:
  """--workdir names a directory (or a path where one can be made): not '', not a file. absl
  prefixes the message with `flag --workdir=VALUE: `."""
  from absl import flags

  if value is None:
    return True  # required or not: absl's own check says so
  if not value.strip():
    raise flags.ValidationError("empty; name the run's directory (created when missing)")
  if os.path.exists(value) and not os.path.isdir(value):
    raise flags.ValidationError("is a file, not a directory; name a directory (created when "
                                "missing)")
  return True


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None]) -> None:
  """The `__main__` of every experiment script: app.run(main) with its flags defined and parsed
  by define() and parse_flags(), so a bad command line is one `error:` line and exit status 2.
  Every script also gets --profile (see _traced), a script with a config flag --print_config
  (_printing_config), and its --help lists all of them (_declare_key_flags)."""
  from absl import app, flags

  defined_before = set(flags.FLAGS)
  argv = list(sys.argv)
  define(define_flags, argv)
  flags.DEFINE_boolean(
      "profile", False, "Trace the whole run with the JAX profiler into <workdir, out or "
      "results_dir>/profile (TensorBoard's profile plugin or ui.perfetto.dev).")
  flags.DEFINE_string(
      "compilation_cache", default_compilation_cache(), "Directory of JAX's persistent "
      "compilation cache (at most 2 GiB): a rerun of the same shapes loads its compiled programs "
      "instead of compiling. '' turns it off; JAX_COMPILATION_CACHE_DIR, when set, wins.")
  if _config_flags(flags.FLAGS):
    flags.DEFINE_boolean(
        "print_config", False, "Print the resolved config, one field a line with its value and "
        "origin (default, config file or flag), and exit without running.")
  _declare_key_flags(defined_before)
  if "workdir" in flags.FLAGS:
    flags.register_validator("workdir", _workdir_usable)

  def parser(argv: list[str]) -> list[str]:
    try:
      return parse_flags(argv)
    except UsageError as e:
      fail(e)

  app.run(_one_line_os_errors(_printing_config(_traced(_cached(main)), argv)),
          flags_parser=parser)
