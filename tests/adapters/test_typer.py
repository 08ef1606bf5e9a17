"""Canary: a command class catches its own usage errors through typer's vendored click."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.testing import CliRunner

from ferry.adapters.typer import OwnUsageErrors

seen: list[tuple[list[str], str]] = []


class Answering(OwnUsageErrors):
    @staticmethod
    def on_usage_error(args: list[str], message: str) -> bool:
        seen.append((args, message))
        return "--mine" in args


app = typer.Typer()


@app.command(cls=Answering)
def command(mine: Annotated[bool, typer.Option("--mine")] = False, count: int = 1) -> None:
    typer.echo(f"ran {count}")


def test_a_usage_error_reaches_the_command_which_may_answer_it_itself() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["--count", "2"]).output == "ran 2\n"
    answered = runner.invoke(app, ["--mine", "--count", "many"])
    assert answered.exit_code == 2 and "Usage" not in answered.output
    assert seen[-1][0] == ["--mine", "--count", "many"] and "--count" in seen[-1][1]
    left = runner.invoke(app, ["--bogus"])
    assert left.exit_code == 2 and "No such option" in left.output
