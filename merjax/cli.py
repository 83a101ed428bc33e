"""Command-line plumbing every merjax command shares (merjax.main, merjax.score, merjax.bench,
launch.build, launch.sweep, launch.against_pytorch): --help exits 0, and a mistake in the
command line, the config's values or the data ends in one line on stderr that says what is
wrong, where and how to fix it (exit 2 for the command line, 1 for the rest; `--verbosity=1`
also logs the traceback).
Programming errors keep their traceback. On Linux with glibc, a command first starts itself
again with transparent huge pages requested for large blocks (merjax/hugepages.py).
"""
import difflib
import importlib.util
import linecache
import os
import re
import shutil
import signal
import sys

from absl import app, flags, logging
import ml_collections

from merjax import hugepages

# Where the project's own code lives: a ValueError or TypeError that a `raise` statement there
# raised carries a message written for the user; one raised by a library or by Python itself
# (a bad call, an unpacking) is a bug and keeps its traceback.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT_DIRS = tuple(os.path.join(_ROOT, d) + os.sep
                      for d in ("merjax", "configs", "launch", "tfds_builders"))
# absl's own help flags print the usage and then exit 1; asking for help is no failure.
_HELP_FLAGS = {"-?": True, "-help": True, "--help": True, "-helpshort": True,
               "--helpshort": True, "-helpfull": False, "--helpfull": False}
_OVERRIDE = re.compile(r"--?(?:no)?config\.(\S+)")


def run(main_fn):
    """`app.run(main_fn)` where mistakes in the command line, the config or the data end in one
    line on stderr (see the module docstring), and --help exits 0."""
    hugepages.reexec()

    def guarded(argv):
        if len(argv) > 1:
            exit_with(f"error: unexpected arguments {' '.join(argv[1:])!r}; flags look like "
                      f"--name=value (see --help)", 2)
        try:
            return main_fn(argv)
        except app.UsageError as e:  # absl would print the whole usage above it
            exit_with(f"error: {e} (see --help)", 2)
        except KeyboardInterrupt:
            exit_with("interrupted", 128 + signal.SIGINT)
        except Exception as e:  # sorted just below: only user errors end in one line
            if not is_user_error(e):
                raise
            logging.debug("traceback of the error below", exc_info=True)
            exit_with(f"error: {e}", 1)
    app.run(guarded, flags_parser=parse_flags)


def parse_flags(argv):
    """app.run's flags parser: help exits 0, a mistake in the command ends in one line."""
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg in _HELP_FLAGS:
            app.usage(shorthelp=_HELP_FLAGS[arg], writeto_stdout=True, exitcode=0)
    spec = _flag_value(argv, "config")
    if spec is not None and not os.path.isfile(spec.split(":", 1)[0]):
        # ml_collections would defer this to the first use of the config, as an OSError.
        exit_with(f"error: --config={spec}: no such file {spec.split(':', 1)[0]!r} "
                  f"(relative paths start at {os.getcwd()})", 2)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        exit_with(f"error: {_flag_error(e)} (see --help)", 2)
    except (AttributeError, KeyError):
        # ml_collections raises these, chained three deep, for an override of a missing key.
        problem = _unknown_override(argv, spec)
        if problem is None:
            raise
        exit_with(f"error: {problem}", 2)


def unknown_key(config, key):
    """None if `config` has the dotted `key`, else what is missing and the nearest known key."""
    node, path = config, []
    for part in key.split("."):
        name = part.split("[", 1)[0]  # `rules[0]` indexes a tuple; only its name is a key
        if not isinstance(node, ml_collections.ConfigDict):
            return None  # inside a plain value: ml_collections judges the rest
        if name not in node:
            known = [".".join(path + [k]) for k in node.keys()]
            near = difflib.get_close_matches(".".join(path + [name]), known, n=1)
            hint = f"did you mean {near[0]}?" if near else (
                f"known keys{' under ' + '.'.join(path) if path else ''}: {', '.join(known)}")
            return f"the config has no key {'.'.join(path + [name])}; {hint}"
        node, path = node[name], path + [name]
    return None


def is_user_error(e):
    """A mistake the user can fix from its message alone: a bad release or path, or a value the
    project's own checks refused. Anything else is a bug and keeps its traceback."""
    from tfds_builders.common import ReleaseError  # light: no TFDS or JAX import
    if isinstance(e, (ReleaseError, FileNotFoundError)):
        return True
    return isinstance(e, (ValueError, TypeError)) and _raised_on_purpose(e)


def exit_with(line, status):
    sys.stderr.write(f"{_program()}: {line}\n")
    sys.stderr.flush()
    sys.exit(status)


def _raised_on_purpose(e):
    """Whether `e` came from a `raise` statement in the project's code."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not tb.tb_frame.f_code.co_filename.startswith(_PROJECT_DIRS):
        return False
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
    return line.lstrip().startswith("raise ")


def _flag_error(e):
    """absl's message, or for a config file whose get_config raised a ValueError (ml_collections
    pastes the whole traceback into it), the flag and that error's own line."""
    message = str(e).strip()
    lines = message.splitlines()
    if "Error whilst parsing config file" in message and lines[-1].startswith("ValueError: "):
        flag = lines[0].split(": Error whilst", 1)[0].removeprefix("flag ")
        return f"{flag}: {lines[-1].removeprefix('ValueError: ')}"
    return message


def _flag_value(argv, name):
    """The last value given to --name in argv (None if absent)."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        key, sep, rest = arg.lstrip("-").partition("=")
        if arg.startswith("-") and key == name:
            value = rest if sep else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _unknown_override(argv, spec):
    """The line for the first `--config.<key>` in argv that names no key of spec's config."""
    if spec is None:
        return None
    # The flag parser failed before handing its config out; loading it again is cheap.
    path, colon, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("merjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if colon else module.get_config()
    for item in argv[1:]:
        override = _OVERRIDE.fullmatch(item.split("=", 1)[0])
        problem = override and unknown_key(config, override.group(1))
        if problem:
            return f"{override.group(0)}: {problem}"
    return None


def _program():
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec else os.path.basename(sys.argv[0])


def remove_if_empty(folder):
    """Removes `folder` if no file was written under it (a failed run leaves no trace)."""
    if not any(files for _, _, files in os.walk(folder)):
        shutil.rmtree(folder, ignore_errors=True)


