"""Shared CLI pieces: the estimate options, error handling, option -> library call."""
from __future__ import annotations

import functools

import click

from memplan.cli import options
from memplan.cli.options import Opt
from memplan.errors import MemplanError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CLIError(click.ClickException):
    """Printed as one line, `Error: ...`, with exit code 2 (bad input)."""

    exit_code = 2


def one_line(e: click.UsageError) -> click.ClickException:
    """A click usage error (a bad or missing option, an unknown command) as one line that says where
    the help is, instead of click's usage line and hint above it. No arguments at all still prints
    the help (click's NoArgsIsHelpError)."""
    if isinstance(e, _NO_ARGS):
        return e
    where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
    return CLIError(e.format_message() + where)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


def handle_errors(f):
    """Library errors become `Error: ...` (exit code 2), never a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except MemplanError as e:
            raise CLIError(str(e)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None

    return wrapper


def click_option(o: Opt):
    """The click decorator of an option of cli/options.py."""
    kw = {"help": o.help, "show_default": o.show_default, "required": o.required}
    if not o.required:  # click 8.3+: an explicit default, even None, satisfies `required`
        kw["default"] = o.default
    if o.choices:
        kw["type"] = click.Choice(list(o.choices))
    elif o.path:
        kw["type"] = click.Path(dir_okay=False)
    elif o.type is not str:
        kw["type"] = o.type
    if o.flag:
        kw["is_flag"] = True
    if o.callback is not None:
        kw["callback"] = _click_callback(o.callback)
    return click.option(*o.decls, **kw)


def _click_callback(convert):
    def callback(ctx, param, value):
        try:
            return convert(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return callback


def apply_options(f, opts):
    """Decorate `f` with `opts`, the first outermost (first in --help)."""
    for o in reversed(opts):
        f = click_option(o)(f)
    return f


def model_options(f):
    """--model and the options that shape the run (shared by estimate, fit, compare, sweep, plan)."""
    return apply_options(f, options.MODEL)


def run_options(f):
    """--rank, --batch-size, --seq-len: one run's shape (estimate, fit, compare, plan)."""
    return apply_options(f, options.RUN)


def impl_options(f):
    """--impl, --momentum, --beta1: the code that runs the method and its memory-relevant options."""
    return apply_options(f, options.IMPL)


def memory_options(f):
    """--weights, --offload, --loss, --loss-chunk: options of one method's run that change its memory."""
    return apply_options(f, options.MEMORY)


def shared_memory_options(f):
    """--offload, --loss, --loss-chunk for commands over several methods (each keeps its own weights)."""
    return apply_options(f, options.SHARED_MEMORY)


def host_ram_option(f):
    return apply_options(f, [options.HOST_RAM])


def estimate_options(f):
    return apply_options(f, options.ESTIMATE)
