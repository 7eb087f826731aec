"""The compiled builds of the per-row modules: `hub compiled build|status|clean` (see hub.compiled)."""

from __future__ import annotations

import os

import typer

from hub.cli.base import app, console
from hub.errors import CommandFailed

compiled_app = typer.Typer(help="Compiled (Cython) builds of the per-row modules: ~1.3× faster, same output.",
                           no_args_is_help=True)
app.add_typer(compiled_app, name="compiled")


@compiled_app.command("build")
def compiled_build(
    jobs: int = typer.Option(os.cpu_count() or 1, help="Modules compiled at once."),
    if_stale: bool = typer.Option(False, "--if-stale", help="Do nothing when every module's build matches its source."),
) -> None:
    """Compile the per-row modules with Cython beside their sources (a C compiler and the Python
    headers are needed; takes a few minutes). Each is used while its source is unchanged: edit
    one and its source runs until the next build. `make demo` and `make test` run this."""
    from hub import compiled

    if if_stale and compiled.current():
        return
    console.print("Compiling the per-row modules with Cython (a few minutes; hub runs its Python sources if this fails) ...",
                  highlight=False)
    try:
        compiled.build(jobs)
    except ImportError as exc:
        raise CommandFailed(f"Cython is not installed ({exc}): `pip install cython`, then build again. Until then "
                            f"{compiled.summary()}: the others run from their Python sources.") from None
    except Exception as exc:  # the compiler's own messages are above
        raise CommandFailed(f"the build failed ({type(exc).__name__}: {exc}); every module runs from its Python source") from None
    console.print(compiled.summary(), highlight=False)


@compiled_app.command("status")
def compiled_status() -> None:
    """Which modules run compiled, and why the others run from source (not built, edited since the
    build, or HUB_PURE_PYTHON=1)."""
    from hub import compiled

    for module, state in compiled.status().items():
        console.print(f"{module:26} {state}", highlight=False)


@compiled_app.command("clean")
def compiled_clean() -> None:
    """Remove the compiled modules: hub runs its Python sources."""
    from hub import compiled

    compiled.clean()
    console.print(compiled.summary(), highlight=False)
