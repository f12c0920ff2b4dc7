"""README and docs/*.md against the real command line (docs: README "CLI").

- the README's CLI table lists exactly the sub-commands ``ganviews --help`` has, and each row
  names the options its command requires;
- every ``ganviews COMMAND … --flag`` written in a code span or block of README.md or
  docs/*.md names a command that exists and flags that command accepts;
- ``run --help`` lists every stage the pipeline knows, and ``ganviews deploy`` registers a
  deployment for each stage's flow;
- relative links and ``docs/<page>.md`` mentions point at files that exist.

Only the argparse tree is built (no torch, no Prefect), so the module takes well under a second.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from ganviews.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of a command and of its own sub-commands (``query sql``, …)."""
    out = {s for a in parser._actions for s in a.option_strings}
    for sub in _subcommands(parser).values():
        out |= _flags(sub)
    return out


def _required(parser: argparse.ArgumentParser) -> set[str]:
    return {
        max(a.option_strings, key=len)
        for a in parser._actions
        if a.required and a.option_strings and not isinstance(a, argparse._SubParsersAction)
    }


def _readme_cli_rows() -> dict[str, list[str]]:
    """{command: [row, …]} from the table of README's ``## CLI`` section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        match = re.match(r"\| `([a-z][a-z-]*)[^`]*`", line)
        if match:
            rows.setdefault(match.group(1), []).append(line)
    return rows


def _code_text(path: Path) -> list[str]:
    """The code spans and fenced blocks' lines of a Markdown file, continuation lines joined."""
    text = path.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    # a usage line continues on indented lines (with or without a trailing backslash)
    joined = [re.sub(r"\\\n[ \t]*|\n[ \t]+(?=[\[-])", " ", b) for b in blocks]
    return [line for b in joined for line in b.splitlines()] + spans


def test_readme_cli_table_lists_exactly_the_subcommands() -> None:
    commands = set(_subcommands(build_parser()))
    rows = set(_readme_cli_rows())
    assert rows - commands == set(), f"README CLI table lists unknown commands {rows - commands}"
    assert commands - rows == set(), f"README CLI table lacks {sorted(commands - rows)}"


def test_readme_cli_rows_name_the_required_options() -> None:
    commands = _subcommands(build_parser())
    missing = {}
    for name, rows in _readme_cli_rows().items():
        parsers = [commands[name], *_subcommands(commands[name]).values()]
        needed = set().union(*(_required(p) for p in parsers))
        lacking = sorted(flag for flag in needed if not any(flag in row for row in rows))
        if lacking:
            missing[name] = lacking
    assert not missing, f"README CLI rows omit required options: {missing}"


def test_every_documented_flag_exists() -> None:
    commands = _subcommands(build_parser())
    wrong = []
    for path in DOCS:
        for line in _code_text(path):
            for match in re.finditer(r"(?<![\w./-])ganviews\s+([a-z][a-z-]+)([^|;&]*)", line):
                name, rest = match.groups()
                if name == "import":  # ``from ganviews import …``
                    continue
                if name not in commands:
                    wrong.append(f"{path.name}: unknown command {name!r} in {line.strip()!r}")
                    continue
                rest = rest.split(" ganviews ")[0]  # two commands on one line
                flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest))
                unknown = sorted(flags - _flags(commands[name]))
                if unknown:
                    wrong.append(f"{path.name}: {name} has no {unknown} ({line.strip()!r})")
    assert not wrong, "\n".join(wrong)


def _pipeline_stages() -> list[str]:
    """``tasks.pipeline_config.STAGES``, read from the source (importing it loads torch)."""
    tree = ast.parse((REPO / "tasks" / "pipeline_config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "STAGES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError("tasks/pipeline_config.py defines no STAGES")


def test_run_help_lists_every_stage() -> None:
    run = _subcommands(build_parser())["run"]
    stages_help = next(a.help for a in run._actions if "--stages" in a.option_strings)
    listed = re.search(r"subset of ([a-z_,]+)", stages_help).group(1).split(",")
    assert listed == _pipeline_stages()


def test_every_relative_link_and_docs_page_exists() -> None:
    """``[text](path)`` links and ``docs/<page>.md`` mentions point at files that exist."""
    broken = []
    for path in DOCS:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.name}: link {target}")
        for page in re.findall(r"\bdocs/([a-z_]+\.md)", text):
            if not (REPO / "docs" / page).exists():
                broken.append(f"{path.name}: docs/{page}")
    assert not broken, broken


def test_deploy_registers_every_stage_flow() -> None:
    """Each flow of ``flows.pipeline.STAGE_FLOWS`` (read from the source) is a deployment."""
    from ganviews.cli.deploy import STAGE_ENTRYPOINTS

    tree = ast.parse((REPO / "flows" / "pipeline.py").read_text())
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "STAGE_FLOWS"
    )
    flows = {f"flows.stages:{value.attr}" for value in table.values}
    assert len(flows) == len(_pipeline_stages())
    assert flows - set(STAGE_ENTRYPOINTS.values()) == set()
