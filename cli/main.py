"""The `memplan` command line: parses options, calls the library, prints tables.

Library errors (`MemplanError`) become one-line `Error: ...` messages with exit
code 2 and no traceback. Commands from other modules of this package
(validate, planner, app) are added to the group when present.

Start-up time is part of the interface (benchmarks/cli_vs_peers.py): a command
imports what it uses inside its body (tables, tabulate, the planner), and the
version is given directly rather than read through importlib.metadata.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from memplan import __version__
from memplan.cli import options
from memplan.cli.common import CONTEXT_SETTINGS, apply_options, estimate_options, handle_errors, one_line
from memplan.cli.distributed import layout_options


def json_option(f):
    return apply_options(f, [options.JSON])


class Group(click.Group):
    """The core commands live in this file; the other modules' commands (validate,
    planner, app) are imported the first time a command not defined here is asked
    for, or the list of all commands (--help): `memplan estimate` starts without them."""

    _optional_loaded = False

    def _load_optional(self) -> None:
        if not self._optional_loaded:
            self._optional_loaded = True
            _add_optional_commands(self)

    # click prints its usage errors below a usage line and a hint; here they are one line too
    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise one_line(e) from None

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands:
            self._load_optional()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        self._load_optional()
        return super().list_commands(ctx)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="memplan")
def cli():
    """Memory planner for memory-efficient LLM training.

    Estimate the memory of one training step (by category and phase), check the
    fit on a GPU, compare methods (GaLore, GoLore, SUMO, GradNormLoRP, AdamW,
    8-bit Adam, Adafactor, LoRA, ReLoRA, ...) and size hardware.

    Example: memplan estimate --model llama-7b --method golore --rank 128 --gpu rtx-4090
    """


@cli.command()
@estimate_options
@layout_options
@json_option
@handle_errors
def estimate(as_json, layout, num_gpus, bucket_view, **opts):
    """Memory of one training step: categories, phases, peak and GPU fit.

    \b
    Example:
      memplan estimate --model llama-7b --method golore --rank 128 --gpu rtx-4090
      memplan estimate --model ./my-model/config.json --method galore8bit --layerwise --json
      memplan estimate --model llama-7b --method adamw --layout fsdp2 --num-gpus 8 --gpu a100-80gb
    """
    from memplan.cli.estimate_body import render

    click.echo(render(opts, as_json, layout, num_gpus, bucket_view))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def models(as_json):
    """List the built-in model profiles (any HF config.json path works too).

    Example: memplan models
    """
    from memplan.cli.tables import models_table

    click.echo(models_table(as_json))


@cli.command()
@click.option("--gpu-file", type=click.Path(dir_okay=False), default=None,
              help="TOML or JSON file adding or overriding GPU profiles.")
@click.option("--sources", is_flag=True, help="Where each GPU's memory figure and price come from, in full.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def gpus(gpu_file, sources, as_json):
    """List the GPU profiles: memory as the driver reports it, what CUDA can allocate, and prices.

    \b
    Example:
      memplan gpus
      memplan gpus --sources     # where each figure comes from
    """
    from memplan.cli.tables import gpus_table

    click.echo(gpus_table(gpu_file, as_json, sources))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def methods(as_json):
    """List the training methods, each with a one-line description and its paper.

    Example: memplan methods
    """
    from memplan.cli.tables import methods_table

    click.echo(methods_table(as_json))


def _add_optional_commands(group: click.Group) -> None:
    for name in ("validate", "planner", "app", "advise", "snapshot"):
        mod_name = f"memplan.cli.{name}"
        if importlib.util.find_spec(mod_name) is None:
            continue
        mod = importlib.import_module(mod_name)
        for cmd in getattr(mod, "COMMANDS", ()):
            group.add_command(cmd)


def main() -> None:
    cli(prog_name="memplan")


if __name__ == "__main__":
    sys.exit(main())
