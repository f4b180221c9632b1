"""The `layerscope` command. Each command module registers itself here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # typer 0.29 parses with its own copy of click
    from typer._click import Context
    from typer._click.exceptions import ClickException
except ImportError:  # older typer uses click itself; mypy checks against the installed typer's copy
    from click import Context  # type: ignore[assignment]  # the same class, from the other package
    from click.exceptions import ClickException  # type: ignore[assignment]  # the same class, from the other package

from layerscope.cli import direct, probes, studies, tui_command
from layerscope.cli import heads as heads_commands
from layerscope.cli import jacobianlens as jacobianlens_commands
from layerscope.cli import lens as lens_commands
from layerscope.cli import reproduce as reproduce_commands
from layerscope.cli import steer as steer_commands
from layerscope.cli import trace as trace_commands
from layerscope.cli import tunedlens as tunedlens_commands


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """A bad option value, an unknown option or a missing one is bad input like any other: one `error:` line
    and exit 1, not click's usage box and exit 2."""
    try:
        yield
    except ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a group called alone has shown its help, as asked
            raise typer.Exit(0) from None
        context = getattr(error, "ctx", None)
        hint = f" See '{context.command_path} --help'." if context is not None else ""
        typer.echo(f"error: {error.format_message().rstrip('.')}.{hint}", err=True)
        raise typer.Exit(1) from None


class OneLineErrorsGroup(TyperGroup):
    """Parses the top-level options (make_context) and every subcommand's (inside invoke) under
    `one_line_usage_errors`, so the rule holds in the installed command and under CliRunner alike."""

    def make_context(self, *args: Any, **kwargs: Any) -> Context:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Context) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="layerscope",
    help="See what each layer of a language model is doing. With no command, opens the explorer on the demo model.",
    cls=OneLineErrorsGroup,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("lens")(lens_commands.lens)
app.command("run")(lens_commands.run)
app.command("patchscope")(heads_commands.patchscope)
app.add_typer(heads_commands.heads_app, name="heads")
app.command("sweep")(studies.sweep)
app.command("influence")(studies.influence)
app.command("stages")(studies.stages)
app.command("neurons")(direct.neurons)
app.command("exit")(studies.exit_estimate)
app.command("probe")(probes.probe)
app.command("attribute")(direct.attribute)
app.command("tui")(tui_command.tui)
app.command("trace")(trace_commands.trace)
app.add_typer(tunedlens_commands.tunedlens_app, name="tunedlens")
app.add_typer(jacobianlens_commands.jacobianlens_app, name="jacobianlens")
app.add_typer(reproduce_commands.reproduce_app, name="reproduce")
app.add_typer(steer_commands.steer_app, name="steer")


@app.callback(invoke_without_command=True)
def default(
    context: typer.Context,
    list_themes: Annotated[
        bool, typer.Option("--list-themes", help="Print the theme names the explorer's --theme accepts and exit.")
    ] = False,
) -> None:
    """Without a command: open the explorer."""
    if list_themes:
        tui_command.print_themes()
        raise typer.Exit(0)
    if context.invoked_subcommand is None:
        tui_command.tui()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
