"""typer: a command whose usage errors it answers itself (`ferry verify --json`).

typer vendors click as `typer._click` and re-exports neither its `Context` nor its
`UsageError`; a command class that catches a usage error must name both.
"""

from __future__ import annotations

from collections.abc import Callable

from typer._click.core import Context
from typer._click.exceptions import UsageError
from typer.core import TyperCommand


class OwnUsageErrors(TyperCommand):
    """Calls `on_usage_error(args, message)` on a usage error; when it returns True the
    command exits 2 without click's own usage text, else click answers as usual."""

    on_usage_error: Callable[[list[str], str], bool] = staticmethod(lambda args, message: False)

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        given = list(args)
        try:
            return super().parse_args(ctx, args)
        except UsageError as error:
            if not type(self).on_usage_error(given, error.format_message()):
                raise
            ctx.exit(2)
