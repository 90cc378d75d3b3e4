"""The typer application: global options, then every command registered from its module."""

from __future__ import annotations

from typing import Annotated

import typer

from segsearch.cli import concept, index, models, search, serve

app = typer.Typer(
    help="Search inside photo libraries at the level of individual objects.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _no_placeholders_on_flags() -> None:
    """Typer's help shows every option's type (``<str>``, ``<int>``); a flag or a counter takes no
    value, so ``--json <bool>`` or ``-v <int>`` would tell a user to type one. Those show none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_segsearch", False):
        return

    def display_type_rich(self, ctx):
        return None if (self.is_flag or self.count) else shown(self, ctx)

    display_type_rich._segsearch = True
    TyperOption.display_type_rich = display_type_rich


_no_placeholders_on_flags()


def _version(value: bool) -> None:
    if value:
        from segsearch import __version__

        typer.echo(f"segsearch {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def global_options(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
    log_format: Annotated[
        str,
        typer.Option(
            help="auto (rich on a terminal, JSON lines otherwise, e.g. in containers) | rich | json | text.",
            case_sensitive=False,
        ),
    ] = "auto",
):
    """Search inside photo libraries at the level of individual objects."""
    import logging

    if ctx.invoked_subcommand is None:  # options only (e.g. `segsearch -v`): the help, not an error
        typer.echo(ctx.get_help())
        raise typer.Exit()

    from segsearch.logs import configure
    from segsearch.settings import unknown_env_vars

    configure(verbose=verbose, quiet=quiet, fmt=log_format)
    for var in unknown_env_vars():
        logging.getLogger("segsearch").warning("ignoring unknown environment variable %s", var)


for command in (index.index, index.doctor, search.search, search.info, search.export, serve.serve, serve.demo):
    app.command()(command)
app.add_typer(models.app, name="models")
app.add_typer(concept.app, name="concept")
