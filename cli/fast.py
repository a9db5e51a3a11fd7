"""The `memplan` command's entry point: `memplan estimate` starts without click.

Importing click and its dependencies costs a fresh process about 30 ms, more than the
estimate itself, so `memplan estimate ...` is parsed here from the same option table the
click command is built from (cli/options.py) and printed by the same code
(cli/estimate_body.py). Only the plain forms are taken: `--name value`, `--name=value`,
`-x value` and the flags. Anything else (help, an unknown or malformed option, a bad
value, another command) and any error of the estimate itself go to the click command,
which parses and reports exactly as always: this path only ever prints what click's
would, or nothing.
"""
from __future__ import annotations

import sys

from memplan.cli import options

_TAKEN = options.ESTIMATE + options.LAYOUT + [options.JSON]


def _switches() -> dict:
    table = {}
    for o in _TAKEN:
        for sw, val in o.switches().items():
            table[sw] = (o, val)
    return table


def _convert(o: options.Opt, word: str):
    """The value click would give `o` for `word`; ValueError where click would refuse it (or
    where this path does not follow click: paths, words that look like options)."""
    if o.path or word.startswith("-") and not word[1:2].isdigit():
        raise ValueError(word)
    if o.choices is not None:
        if word not in o.choices:
            raise ValueError(word)
        return word
    if o.callback is not None:
        return o.callback(word)
    return word if o.type is str else o.type(word)


def parse(words: list[str]) -> dict | None:
    """{option name: value} for `memplan estimate WORDS`, defaults filled in; None where click
    should parse them."""
    table = _switches()
    values = {o.name: o.default for o in _TAKEN}
    i = 0
    while i < len(words):
        word = words[i]
        sw, eq, arg = word.partition("=") if word.startswith("--") else (word, "", None)
        hit = table.get(sw)
        if hit is None:
            return None
        o, flag_value = hit
        if flag_value is not None:  # a flag: takes no value
            if eq:
                return None
            values[o.name] = flag_value
        else:
            if not eq:
                i += 1
                if i == len(words):
                    return None
                arg = words[i]
            try:
                values[o.name] = _convert(o, arg)
            except (ValueError, TypeError):
                return None
        i += 1
    if any(o.required and values[o.name] is None for o in _TAKEN):
        return None
    return values


def fast_estimate(argv: list[str]) -> str | None:
    """The output of `memplan ARGV` when this path takes it, else None."""
    if argv[:1] != ["estimate"]:
        return None
    values = parse(argv[1:])
    if values is None:
        return None
    from memplan.cli.estimate_body import render

    as_json, layout, num_gpus, bucket_view = (values.pop(k) for k in ("as_json", "layout", "num_gpus", "bucket_view"))
    try:
        return render(values, as_json, layout, num_gpus, bucket_view)
    except Exception:  # noqa: BLE001  (click's path runs it again and reports it as it always has)
        return None


def main() -> None:
    out = fast_estimate(sys.argv[1:])
    if out is None:
        from memplan.cli.main import main as click_main

        return click_main()
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
