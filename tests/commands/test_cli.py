"""The command line as a whole: it imports only what a command runs (so ``--help`` and
``params`` work without the optional packages), and one error family decides what is a user's
mistake (a message, exit 2) and what is a bug (a traceback)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import attnkit
from attnkit import cli

OPTIONAL = ("matplotlib", "fastapi", "uvicorn", "starlette", "transformers")


def run_blocked(argv: list[str],
                blocked: tuple[str, ...] = OPTIONAL) -> subprocess.CompletedProcess:
    """``python -m attnkit ARGV`` in a process where importing any of ``blocked`` fails, as if
    the package were not installed; prints which of them were loaded on exit."""
    code = textwrap.dedent(f"""
        import atexit, importlib.abc, sys
        BLOCKED = {blocked!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)

        sys.meta_path.insert(0, Blocker())
        atexit.register(lambda: print("LOADED", sorted({{m.split(".")[0] for m in sys.modules}}
                                                       & set(BLOCKED)), file=sys.stderr))
        sys.argv = ["attnkit", *{argv!r}]
        from attnkit.cli import main
        raise SystemExit(main())
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_help_and_params_need_none_of_the_optional_packages():
    done = run_blocked(["--help"])
    assert done.returncode == 0, done.stderr
    for command in ("explain", "capture", "find-heads", "serve", "params", "train-toy"):
        assert command in done.stdout
    assert "LOADED []" in done.stderr
    done = run_blocked(["params", "--preset", "gpt3"])
    assert done.returncode == 0, done.stderr
    assert "57,982,058,496" in done.stdout and "LOADED []" in done.stderr
    for command in ("explain", "capture", "serve", "find-heads", "train-toy"):
        done = run_blocked([command, "--help"])
        assert done.returncode == 0, (command, done.stderr)


def test_explain_in_the_terminal_needs_no_matplotlib():
    done = run_blocked(["explain", "a fluffy blue creature", "--model", "toy", "--layer", "0",
                        "--head", "0"], blocked=("matplotlib", "fastapi", "uvicorn"))
    assert done.returncode == 0, done.stderr
    assert "each query's best-answering key:" in done.stdout and "LOADED []" in done.stderr


def test_a_missing_package_is_a_clear_error_not_a_traceback():
    done = run_blocked(["explain", "a fluffy blue creature", "--layer", "0", "--head", "0"],
                       blocked=("transformers",))
    assert done.returncode == 2
    assert "attnkit explain: error: loading Hugging Face models needs the transformers " \
           "package: pip install 'attnkit[hf]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_user_mistakes_exit_2_and_bugs_show_their_traceback(monkeypatch, capsys):
    def mistake(args):
        raise attnkit.AttnkitError("the layer does not exist")

    def bug(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr("attnkit.commands.params.run", mistake)
    assert cli.main(["params"]) == 2
    assert capsys.readouterr().err == "attnkit params: error: the layer does not exist\n"
    monkeypatch.setattr("attnkit.commands.params.run", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["params"])


def test_the_error_family():
    from attnkit import errors

    assert issubclass(attnkit.AttnkitError, ValueError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), attnkit.AttnkitError)
    assert issubclass(errors.InputTypeError, TypeError)
    assert issubclass(errors.OutOfRangeError, IndexError)
