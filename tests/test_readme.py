"""The README's examples run: its Python blocks execute, and its `dvae` command lines parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from discrete_vae.cli import build_parser
from discrete_vae.sweep import load_spec

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def _dvae_commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part.split("#")[0])
                if words and words[0] == "dvae":
                    commands.append(words[1:])
    return commands


def test_readme_has_examples() -> None:
    assert _blocks("python"), "README has no Python example"
    assert len(_dvae_commands()) >= 6


@pytest.mark.parametrize("argv", _dvae_commands(), ids=lambda a: " ".join(a)[:40])
def test_readme_command_parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]
    if args.command == "sweep":  # the spec it names is shipped and reads
        load_spec(README.parent / args.spec)


@pytest.mark.parametrize("text", _blocks("yaml"))
def test_readme_sweep_spec_reads(text: str, tmp_path: Path) -> None:
    """The README's spec example is a valid spec, in its quick form too."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert load_spec(path).points() and load_spec(path, quick=True).points()


@pytest.mark.parametrize("code", _blocks("python"))
def test_readme_python_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    assert "result" in namespace and namespace["result"]["nll"] > 0
