"""The command layer (commands.py): every tool answers --help and --version without loading
torch, turns a bad input into exit 2 and one line, and Ctrl-C into exit 130 and one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cutmix_runner import commands
from tests.helpers import heavy_modules_loaded, run_tool

TOOLS = {"predict": "cutmix-predict", "evaluate": "cutmix-eval", "export": "cutmix-export",
         "report": "cutmix-report", "search": "cutmix-search"}


@pytest.mark.parametrize("tool", TOOLS)
def test_help_and_version(tool: str) -> None:
    helped = run_tool(tool, "--help")
    assert helped.returncode == 0 and f"usage: {TOOLS[tool]}" in helped.stdout
    for flag in ("--version", "--out", "--force"):
        assert flag in helped.stdout
    versions = run_tool(tool, "--version")
    assert versions.returncode == 0 and versions.stdout.startswith("cutmix-runner ")


def test_parsing_loads_no_torch() -> None:
    """--help and a mistyped flag answer before torch is imported (in a fresh process)."""
    code = ("from cutmix_runner import commands\n"
            "for argv in (['--help'], ['--no-such-flag']):\n"
            "    try:\n        commands.predict(argv)\n    except SystemExit:\n        pass")
    assert heavy_modules_loaded(code) == []


@pytest.mark.parametrize("tool", TOOLS)
def test_a_missing_run_is_one_line_and_writes_nothing(tool: str, tmp_path) -> None:
    args = {"predict": [str(tmp_path / "nothing"), str(tmp_path / "x.png")],
            "search": ["--space", str(tmp_path / "nothing.yaml")]}.get(
        tool, [str(tmp_path / "nothing")])
    result = run_tool(tool, *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("raised, code, words", [
    (KeyboardInterrupt, 130, "cutmix-x: interrupted"),
    (RuntimeError("a bug"), 1, "unexpected error (RuntimeError: a bug); the traceback is in"),
])
def test_the_wrapper_turns_outcomes_into_exit_codes(raised: BaseException, code: int,
                                                    words: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def work() -> int:
        raise raised

    with pytest.raises(SystemExit) as exit_:
        commands.run("cutmix-x", work)
    err = capsys.readouterr().err
    assert exit_.value.code == code and err.count("\n") == 1 and words in err


def test_sigterm_while_a_tool_works_is_exit_130_in_one_line() -> None:
    """A real process whose work has begun (it says so) receives SIGTERM."""
    code = ("import time\nfrom cutmix_runner import commands\n"
            "def work():\n    print('working', flush=True)\n    time.sleep(60)\n"
            "commands.run('cutmix-x', work)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "working\n"
    process.terminate()
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and err == "cutmix-x: interrupted\n"


def test_torchrun_answers_help_and_version_before_torch_loads(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cutmix_runner import torchrun

    for flag, start in (("--help", "usage: cutmix-torchrun"), ("--version", "cutmix-runner ")):
        monkeypatch.setattr(sys, "argv", ["cutmix-torchrun", flag])
        torchrun.main()
        assert capsys.readouterr().out.startswith(start)
    code = ("import sys\nfrom cutmix_runner import torchrun\n"
            "for flag in ('--help', '--version'):\n"
            "    sys.argv = ['cutmix-torchrun', flag]\n    torchrun.main()")
    assert heavy_modules_loaded(code) == []
