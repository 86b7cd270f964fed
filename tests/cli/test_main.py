"""The ``fsd`` group itself: every command reachable, listed without importing it, errors mapped."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from cli.main import COMMAND_MODULES, COMMAND_SUMMARIES, cli


def test_every_command_resolves_to_its_module() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == list(COMMAND_MODULES)
    assert set(COMMAND_SUMMARIES) == set(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_help_lists_every_command_in_order() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    positions = [out.index(f"  {name} ") for name in COMMAND_MODULES]
    assert positions == sorted(positions)
    for summary in COMMAND_SUMMARIES.values():
        assert summary in out


def test_help_and_version_import_no_heavy_module() -> None:
    """`fsd --help` answers in a fraction of a second because torch, zarr and faiss stay unimported."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from cli.main import cli\n"
        "for args in (['--help'], ['--version']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'zarr', 'faiss', 'dask', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_loaded_commands_show_the_same_summary_as_the_listing() -> None:
    ctx = click.Context(cli)
    for name, summary in COMMAND_SUMMARIES.items():
        assert cli.get_command(ctx, name).get_short_help_str(limit=200) == summary


def test_completing_command_names_imports_no_command() -> None:
    code = (
        "import sys, click\n"
        "from cli.main import cli\n"
        "items = cli.shell_complete(click.Context(cli), 'tr')\n"
        "print([i.value for i in items], 'torch' in sys.modules, 'cli.cmd_eval' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['train-teacher', 'train-student'] False False"
