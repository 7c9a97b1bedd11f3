"""One style for every ``python -m edmlab.cli.<name>`` tool.

- ``parser(doc, name)``: argparse with ``prog="python -m edmlab.cli.<name>"``, the description the first paragraph
  of the tool's module docstring (the rest below the options), and every option's default in ``--help``. The
  main input is positional; options are ``--kebab-case`` flags.
- Errors: one line ``error: <message>`` on stderr and exit code 2, for a usage error that argparse finds (with
  where the help is) and for bad input found while running: ``run(main)`` turns a ``ValueError`` or a
  ``FileNotFoundError`` (and the other path errors of ``BAD_INPUT``) raised by ``main`` into that line, while
  ``main(argv)`` called from Python raises the error itself.

Exceptions: ``python -m edmlab.cli.convert`` refuses a file with exit code 1 (as it always has:
tests/test_nvlabs_pickle.py and tests/test_safe_loading.py hold it to that), still in one ``error:`` line;
``phema``'s main exits itself (tests/test_phema.py expects its SystemExit); ``ref_stats`` keeps ``--data`` and
``--dest`` as flags (tests/test_fid.py and tests/test_dinov2.py call it so).
"""
import argparse
import re
import sys

BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)
USAGE_ERROR = 2  # argparse's exit code for a usage error


def one_line(message) -> str:
    return re.sub(r"\s*\n\s*", " ", str(message).strip())


def error(message, code: int = USAGE_ERROR) -> int:
    """Print ``error: <message>`` (one line) on stderr; return ``code``, the command's exit code."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return code


def fail(message, code: int = USAGE_ERROR):
    """``error(message)``, then exit with ``code``."""
    sys.stdout.flush()
    raise SystemExit(error(message, code))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each option's help ends with its default when it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or not action.option_strings or action.required or default is None or \
                default is False or default == [] or default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, its usage errors as one line: ``error: <message> (see <prog> --help)``, exit code 2."""

    def error(self, message):
        fail(f"{message} (see {self.prog} --help)")


def parser(doc: str, name: str | None = None, prog: str | None = None) -> Parser:
    """The parser of the tool ``edmlab.cli.<name>`` (or of the command ``prog``): its description the first
    paragraph of the module docstring ``doc``, the rest after the options."""
    first, _, rest = doc.strip().partition("\n\n")
    return Parser(prog=prog or f"python -m edmlab.cli.{name}", description=first, epilog=rest or None,
                  formatter_class=HelpFormatter)


def run(main, argv=None) -> int:
    """``main(argv)`` as a command: its exit code (an int it returns, else 0), or 2 after one line ``error:
    <message>`` on stderr when it raises one of ``BAD_INPUT``."""
    try:
        code = main(argv)
    except BAD_INPUT as e:
        return error(e)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0
