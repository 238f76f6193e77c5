"""The `nfit` command line: a thin Typer layer over ``nfit.api`` and the registries."""

from __future__ import annotations

import sys

import typer

from nfit import __version__
from nfit.cli import batch_cmds, jobs, kernel_cmds, model_cmds, phantom_cmds

app = typer.Typer(
    name="nfit",
    help="Fit neural fields (Fourier-feature MLPs) to images, volumes and meshes, and through CT and MRI measurements.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(jobs.image)
app.command()(jobs.volume)
app.command()(jobs.sdf)
app.command()(jobs.ct)
app.command()(jobs.mri)
app.command()(phantom_cmds.phantom)
app.command()(model_cmds.render)
app.command()(model_cmds.info)
app.command()(model_cmds.encodings)
app.command()(jobs.kernel)
app.command("spectral-bias")(kernel_cmds.spectral_bias)
app.command()(jobs.resume)
app.command()(jobs.sweep)
app.command("run")(jobs.run_spec)
app.command()(batch_cmds.batch)
app.command()(batch_cmds.table)


def _version(value: bool) -> None:
    if value:
        print(f"nfit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Fit neural fields to real signals."""


def main() -> None:
    """Console entry point: the parser's usage errors become one line and exit code 2.

    Typer's parser exceptions are matched by shape (``format_message`` and ``exit_code``)
    because newer Typer releases vendor their click under a private module name.
    """
    try:
        code = app(standalone_mode=False)
    except (typer.Exit, typer.Abort) as exc:
        code = getattr(exc, "exit_code", 130)
        if isinstance(exc, typer.Abort):
            print("nfit: interrupted", file=sys.stderr)
    except KeyboardInterrupt:
        print("nfit: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        print(f"nfit: error: {exc.format_message()}", file=sys.stderr)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)
