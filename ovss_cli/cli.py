"""The `ovss` command line: thin Typer commands that parse, validate and call one engine function.

Each command lives in `ovss_cli/commands/<name>.py` and imports torch only inside its body,
so `ovss --help` stays instant. Expected failures raise `OvssError`/`UsageError`; `main`
prints their one-line message and exits with their code (traceback only with --debug).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import typer

from ovss_cli.commands import benchmark as benchmark_cmd
from ovss_cli.commands import convert as convert_cmd
from ovss_cli.commands import evaluate as evaluate_cmd
from ovss_cli.commands import export as export_cmd
from ovss_cli.commands import predict as predict_cmd
from ovss_cli.commands import prepare as prepare_cmd
from ovss_cli.commands import recipes as recipes_cmd
from ovss_cli.commands import runs as runs_cmd
from ovss_cli.commands import train as train_cmd
from ovss_cli.commands import wsss as wsss_cmd
from ovss_cli.errors import OvssError
from ovss_cli.runtime import distributed

app = typer.Typer(
    name="ovss",
    help="Semantic segmentation with CLIP where the classes are free text.\n\n"
    "Example: ovss evaluate --bench toy",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    if debug:
        os.environ["OVSS_DEBUG"] = "1"


def friendly_errors(command: Callable) -> Callable:
    """Turn an expected `OvssError` into one red line and its exit code (traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OvssError as err:
            if os.environ.get("OVSS_DEBUG") == "1":
                raise
            # one line, whatever the message holds: a wrapped library message must not spill over
            message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
            raise typer.Exit(err.exit_code) from None

    return wrapper


def register(name: str, command: Callable, **kwargs) -> None:
    app.command(name, **kwargs)(friendly_errors(command))


register("prepare", prepare_cmd.prepare, no_args_is_help=True)
register("train", train_cmd.train, no_args_is_help=True)
register("distill", train_cmd.distill, no_args_is_help=True)
register("evaluate", evaluate_cmd.evaluate)
register("predict", predict_cmd.predict, no_args_is_help=True)
register("export", export_cmd.export, no_args_is_help=True)
register("convert", convert_cmd.convert, no_args_is_help=True)
register("prototypes", wsss_cmd.prototypes, no_args_is_help=True)
register("pseudolabel", wsss_cmd.pseudolabel, no_args_is_help=True)
register("recipes", recipes_cmd.recipes)
register("runs", runs_cmd.runs, no_args_is_help=True)

benchmark_app = typer.Typer(help="Speed and memory of training and inference, as ratios to the image encoder alone.",
                            no_args_is_help=True)
benchmark_app.command("train")(friendly_errors(benchmark_cmd.benchmark_train))
benchmark_app.command("eval")(friendly_errors(benchmark_cmd.benchmark_eval))
benchmark_app.command("pseudolabel")(friendly_errors(benchmark_cmd.benchmark_pseudolabel))
app.add_typer(benchmark_app, name="benchmark")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`ovss`, `python -m ovss_cli`); `argv` defaults to sys.argv[1:]."""

    distributed.LAUNCH_ARGV = list(argv) if argv is not None else None  # what --gpus N relaunches
    try:
        app(args=argv)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
