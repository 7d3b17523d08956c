"""The README's commands still hold: every example parses, and the command reference names every option.

Examples are only parsed, never run: `dosepred` commands through the CLI's own parser (no callback), benchmark
scripts up to the end of their ``parse_args``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest
import typer.core
import typer.main

from dosepred.cli import app

GROUPS = ("detect", "fewshot")
README = Path(__file__).parents[2] / "README.md"
# A command starts a line or follows `&&`, `;` or `|`; usage synopses ("[--port N]") and prose are not commands.
COMMAND = re.compile(r"(?:timeout \d+ )?((?:dosepred|python3? (?:-m )?(?:benchmarks|dosepred))\b[^\[]*)$")


def readme_commands(text: str) -> list[str]:
    """The commands of the README's shell blocks, continuation lines joined and comments dropped."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if language is None:
                language, lines = line.strip()[3:], []
            else:
                blocks += ["\n".join(lines)] if language in ("", "bash", "sh") else []
                language = None
        elif language is not None:
            lines.append(line)
    commands = []
    for block in blocks:
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            for part in re.split(r"\s*(?:&&|;|\|)\s*", re.sub(r"\s+#.*$", "", line.strip())):
                if (match := COMMAND.match(part)) and not part.startswith("dosepred/"):
                    commands.append(match.group(1).strip())
    return commands


def reference_options(text: str) -> dict[str, set[str]]:
    """The options each synopsis of the README's command reference names ("detect eval": {"--data", ...})."""
    reference = text.split("## Command reference", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    options: dict[str, set[str]] = {}
    for line in reference.splitlines():
        if line.startswith("dosepred "):
            words = line.split()
            named = options.setdefault(" ".join(words[1:3] if words[1] in GROUPS else words[1:2]), set())
        elif not line.startswith(" " * 5):  # a description (4 spaces), not a synopsis' continuation
            continue
        named.update(re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", line))
    return options


def subcommands(group: typer.core.TyperGroup, context: object, prefix: str = "") -> dict[str, object]:
    found = {}
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, typer.core.TyperGroup):
            found |= subcommands(command, context, f"{prefix}{name} ")
        else:
            found[prefix + name] = command
    return found


def parse_dosepred(words: list[str]) -> None:
    """Walk the group tree to the subcommand, then parse its arguments as the CLI would (types, choices)."""
    command: typer.core.TyperCommand | typer.core.TyperGroup = typer.main.get_command(app)
    name, parent = "dosepred", None
    while isinstance(command, typer.core.TyperGroup):
        at = next(i for i, word in enumerate(words) if not word.startswith("-"))
        parent = command.make_context(name, words[: at + 1], parent=parent)
        name, words = words[at], words[at + 1 :]
        command = command.get_command(parent, name)
        assert command is not None, f"no subcommand {name!r}"
    command.make_context(name, words, parent=parent)


class Parsed(Exception):
    """Raised right after a benchmark's arguments parsed, so that nothing runs."""


def parse_benchmark(module_name: str, arguments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, args: list[str] | None = None, namespace: object = None) -> None:
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module_name, *arguments])
    with pytest.raises(Parsed):
        importlib.import_module(module_name).main()


def test_finds_the_readmes_commands() -> None:
    text = "```yaml\ndosepred e\n```\n```bash\ndosepred a \\\n  --b 1   # note\nx && python -m benchmarks.c --d\n```\n"
    assert readme_commands(text) == ["dosepred a --b 1", "python -m benchmarks.c --d"]
    commands = readme_commands(README.read_text())
    assert len(commands) > 50 and any(c.startswith("dosepred prepare") for c in commands)


@pytest.mark.parametrize("command", readme_commands(README.read_text()), ids=lambda command: command[:80])
def test_readme_command_parses(command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    words = shlex.split(command)
    try:
        if words[0] == "dosepred":
            parse_dosepred(words[1:])
        elif words[1:3] == ["-m", "dosepred.cli"]:
            parse_dosepred(words[3:])
        elif words[1] == "-m":
            parse_benchmark(words[2], words[3:], monkeypatch)
        else:
            parse_benchmark(words[1].removesuffix(".py").replace("/", "."), words[2:], monkeypatch)
    except SystemExit as exit_:  # argparse's error
        pytest.fail(f"{command}\n{capsys.readouterr().err}(exit {exit_.code})")
    except Exception as error:  # typer's usage errors (it vendors its own click, so no public class to name)
        message = error.format_message() if hasattr(error, "format_message") else repr(error)
        pytest.fail(f"{command}\n{message}")


def test_command_reference_names_every_option() -> None:
    """Each command has a synopsis; each of its options appears there under one of its names; none it lacks."""
    root = typer.main.get_command(app)
    commands = subcommands(root, root.make_context("dosepred", ["demo"]))
    documented = reference_options(README.read_text())
    assert sorted(documented) == sorted(commands)
    for name, command in commands.items():
        names = [[*p.opts, *p.secondary_opts] for p in command.params if isinstance(p, typer.core.TyperOption)]
        assert not [n for n in names if not documented[name] & set(n)], f"{name}: options missing from the reference"
        assert documented[name] <= {n for group in names for n in group}, f"{name}: the reference names no such option"
