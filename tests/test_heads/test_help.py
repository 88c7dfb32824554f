"""Every example in every --help prints as written and parses with the command's own parser (issue 28, rows 10, 19)."""

import argparse
import re
import shlex

import pytest

from embedcache import cli as embedcache_cli
from heads import cli as heads_cli

PROGRAMS = {"embedcache": embedcache_cli._parser, "heads": heads_cli._parser}


def helps(parser: argparse.ArgumentParser):
    """The parser's own help and every subcommand's, formatted as --help prints them."""
    yield parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub.format_help()


def example_commands(text: str) -> list[str]:
    """Command lines of the examples (lines indented by two spaces that start with a command), continuation
    lines joined."""
    commands, pending = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if pending is None:
            if not re.match(r"^  (\w+=\S+ )*(heads|embedcache|torchrun) ", raw):
                continue
            pending = ""
        pending = (pending + " " + line).strip()
        if pending.endswith("\\"):
            pending = pending[:-1].strip()
            continue
        commands.append(pending)
        pending = None
    return commands


def all_examples():
    for program, build in PROGRAMS.items():
        for text in helps(build()):
            for command in example_commands(text):
                yield program, command


@pytest.mark.parametrize("program, command", sorted(set(all_examples())))
def test_every_example_parses_with_its_own_parser(program, command):
    words = shlex.split(command, comments=True)
    while "=" in words[0]:  # VAR=value before the command
        words.pop(0)
    if words[0] == "torchrun":
        words = words[words.index("-m") + 2 :]
    else:
        words = words[1:]
    parser = PROGRAMS[words and ("heads" if command.count("heads") and program == "heads" else program)]()
    parser.parse_args(words)  # SystemExit (a usage error) fails the test


def test_no_example_lost_its_line_continuation():
    for build in PROGRAMS.values():
        for text in helps(build()):
            for line in text.splitlines():
                # a lone backslash at the end of a source line is eaten by Python: the next line runs on
                assert not re.search(r"\.csv +--label-col|rated\.csv {2,}--", line), line


def test_finetune_help_states_one_default_head():
    text = next(t for t in helps(heads_cli._parser()) if t.startswith("usage: heads finetune"))
    head = " ".join(re.search(r"^  --head HEAD\s+(.*?)(?=\n  -)", text, re.S | re.M).group(1).split())
    assert head.count("default") == 1 and "concat (the default)" in head, head
