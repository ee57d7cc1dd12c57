"""What ssljax's commands share: help that teaches, and user errors as one line, exit status 2.

A user's mistake (a mistyped config path, an unknown preset or field, an invalid value, a
folder that does not exist) is reported as ``error: <what is wrong and what to do>`` on stderr
with exit status 2, as command-line tools do for usage errors; a traceback is kept for bugs,
and shown for user errors too at ``--verbosity=1``.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

USAGE_EXIT_CODE = 2
HELP_FLAGS = ("-h", "--help", "--helpshort", "-?")
# Exceptions ssljax raises for what the user asked (their messages say what to do).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
# The repository's configs/ when ssljax runs from a checkout (tried after ./configs).
_REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` to stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)


def wants_help(argv: Sequence[str]) -> bool:
    """True if ``argv`` asks for help (``-h``, ``--help``, ``--helpshort``)."""
    return any(arg in HELP_FLAGS for arg in argv[1:])


def verbose_requested(argv: Sequence[str]) -> bool:
    """True if ``argv`` sets absl's ``--verbosity``/``-v`` to 1 or more."""
    for arg in argv[1:]:
        for prefix in ("--verbosity=", "-v="):
            if arg.startswith(prefix):
                with contextlib.suppress(ValueError):
                    return int(arg[len(prefix) :]) >= 1
    return False


def config_dir() -> pathlib.Path | None:
    """The folder of config files: ``./configs`` if present, else the checkout's."""
    for candidate in (pathlib.Path("configs"), _REPO_CONFIGS):
        if candidate.is_dir():
            return candidate
    return None


def config_presets(directory: pathlib.Path) -> dict[str, tuple[str, ...]]:
    """Maps each config file in ``directory`` to its ``PRESETS`` (read without importing it).

    Args:
      directory: a folder of config files.

    Returns:
      ``{'configs/byol.py': ('digits', ...), ...}``, sorted by file name; the first preset is
      the default.
    """
    found = {}
    for path in sorted(directory.glob("*.py")):
        presets: tuple[str, ...] = ()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "PRESETS" for t in node.targets
            ):
                with contextlib.suppress(ValueError):
                    presets = tuple(ast.literal_eval(node.value))
        found[os.fspath(path)] = presets
    return found


def train_help() -> str:
    """The text of ``python -m ssljax.main --help``: methods, presets, overrides, fields."""
    directory = config_dir()
    rows = config_presets(directory) if directory else {}
    width = max((len(p) for p in rows), default=0)
    lines = [
        "usage: python -m ssljax.main --config=FILE[:PRESET] --workdir=DIR "
        "[--config.FIELD=VALUE ...]",
        "       ssljax-train (the same flags)",
        "",
        "Pretrains a network by self-supervision and writes checkpoints, metrics.jsonl,",
        "TensorBoard events and summary.json to --workdir. The same command again resumes.",
        "",
        "Methods: " + ", ".join(pathlib.Path(p).stem for p in rows) + " (config.method).",
        "Their config files and presets (after the colon; the first is the default):",
    ]
    for path, presets in rows.items():
        shown = ", ".join(presets) if presets else "(no PRESETS)"
        lines.append(f"  {path:<{width}}  {shown}")
    if not rows:
        lines.append("  (no configs/ folder here: run from the repository's root)")
    lines += [
        "",
        "Override any config field with --config.FIELD=VALUE, for example:",
        "  python -m ssljax.main --config=configs/byol.py --workdir=/tmp/byol "
        "--config.num_epochs=10",
        "  python -m ssljax.main --config=configs/vicreg.py:cifar10_cpu --workdir=/tmp/vicreg \\",
        "      --config.global_batch=512 --config.optimizer.base_lr=0.3",
        "",
        "Every field, its default and what it means: ssljax/config_schema.py (base_config).",
        "The values a preset resolves to, overrides applied: add --print_config.",
        "",
        "Flags:",
        "  --config=FILE[:PRESET]  a config file of the list above",
        "  --workdir=DIR           checkpoints and logs (~ and $VARS are expanded)",
        "  --print_config          print the resolved config and exit",
        "  --verbosity=1           more log lines (loader, checkpoints) and tracebacks of errors",
        "  --helpfull              every flag, JAX's and absl's included",
    ]
    return "\n".join(lines)


def check_config_spec(spec: str | None) -> None:
    """Exits with a one-line error if the file of ``--config=FILE[:PRESET]`` does not exist.

    The error lists the config files that do exist (in the folder the path names, else in
    ``configs/``).
    """
    if not spec:
        return
    path = spec.partition(":")[0]
    if os.path.isfile(path):
        return
    folder = pathlib.Path(os.path.dirname(path) or ".")
    if not folder.is_dir() or not list(folder.glob("*.py")):
        folder = config_dir() or folder
    existing = ", ".join(os.fspath(p) for p in sorted(folder.glob("*.py"))) or "none"
    fail(f"--config={spec}: no file {path!r}. Config files: {existing}.")


def absl_help(usage: str, argv: Sequence[str]) -> None:
    """Prints ``usage`` and the flags of the ``__main__`` module, then exits 0, if asked.

    absl's own ``--help`` exits with status 1 and lists no examples; ssljax's commands answer
    ``-h``/``--help`` here, before absl parses anything.

    Args:
      usage: the command's usage line(s) and examples.
      argv: ``sys.argv``.
    """
    if not wants_help(argv):
        return
    from absl import flags

    print(usage.rstrip() + "\n\nFlags:")
    flags.FLAGS.mark_as_parsed()
    print(flags.FLAGS.main_module_help())
    sys.exit(0)


def config_spec_from_argv(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config=X`` or ``--config X``), if any."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg[len("--config=") :]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse_flags_or_fail(argv: Sequence[str]) -> list[str]:
    """Parses absl flags (an ``app.run`` ``flags_parser``); errors are one line, exit status 2.

    A config file's ``get_config`` error (an unknown preset) arrives from ml_collections as a
    traceback inside the flag error: only its last line is kept. An override of a field that
    does not exist arrives as an ``AttributeError`` naming the field.
    """
    from absl import flags

    try:
        return flags.FLAGS(list(argv))
    except flags.Error as err:
        text = str(err).strip().splitlines()
        head = text[0].split(": Error whilst parsing")[0] if text else "flags"
        cause = text[-1].split(": ", 1)[-1] if len(text) > 1 else ""
        fail(f"{head}: {cause}" if cause else head)
    except (AttributeError, KeyError) as err:
        # ml_collections: AttributeError("'name'") for a leaf, KeyError("'name'\nDid you mean
        # ...?") for a missing parent.
        inner = err.args[0] if err.args else err
        # The KeyError arrives wrapped in the AttributeError; its own message is unquoted.
        if isinstance(inner, KeyError) and inner.args:
            inner = inner.args[0]
        text = str(inner)
        field, _, hint = text.partition("\n")
        field = field.strip("\"'")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and field in a]
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        fail(
            f"{given[0] if given else field}: the config {spec} has no field {field!r}. "
            + (f"{hint.strip()} " if hint.strip() else "")
            + "--print_config lists every field (definitions: ssljax/config_schema.py)."
        )


@contextlib.contextmanager
def user_errors_exit_2(verbose: bool) -> Iterator[None]:
    """Turns :data:`USER_ERRORS` into ``error: message`` and exit status 2.

    Args:
      verbose: re-raise instead (the full traceback, for a user who asks or a suspected bug).
    """
    try:
        yield
    except USER_ERRORS as err:
        if verbose:
            raise
        fail(str(err))
