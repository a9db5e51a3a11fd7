"""Regenerate every command output shown in README.md and docs/*.md from the code.

    python docs/render.py           # rewrite the outputs in place
    python docs/render.py --check   # exit 1 and list the blocks whose output is stale

What is rendered (everything else is left as written):

- a fenced block (```text or ```console) whose first line is `$ memplan ...` or
  `$ python -m ...`: the lines after the command are replaced by what the command
  prints now (`memplan` runs in-process through click's CliRunner, from the
  repository root);
- a ```python block whose first line starts with `>>> `: each `>>>` line is run in
  one namespace and the repr of each expression's value written under it;
- a fenced block preceded by `<!-- render: include PATH -->`: its body is the file.

A block preceded by `<!-- render: skip (reason) -->` is left alone (for output that
takes minutes to produce, or depends on the machine). tests/test_docs.py fails when
a doc differs from what the code prints now; run this script to fix it.
"""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*render:\s*(skip|include)\s*(.*?)\s*-->\s*$")


def run_command(command: str) -> str:
    """What `command` prints (stdout and stderr), run from the repository root."""
    args = shlex.split(command)
    if args[0] == "memplan":
        from click.testing import CliRunner

        from memplan.cli.main import cli

        result = CliRunner().invoke(cli, args[1:], prog_name="memplan", catch_exceptions=False)
        return result.output.rstrip("\n")
    if args[:2] == ["python", "-m"]:
        done = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True, check=False)
        return (done.stdout + done.stderr).rstrip("\n")
    raise ValueError(f"cannot render command {command!r}: only 'memplan ...' and 'python -m ...'")


def run_python(lines: list[str]) -> list[str]:
    """A doctest-style block: each `>>> ` line run in order, with the repr of each expression."""
    namespace: dict = {}
    out = []
    for line in lines:
        if not line.startswith(">>> "):
            continue  # old output: regenerated below
        out.append(line)
        tree = ast.parse(line[4:])
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:
            tree.body.pop()
        try:
            exec(compile(tree, "<doc>", "exec"), namespace)  # noqa: S102 (our own docs)
            value = None
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<doc>", "eval"), namespace)  # noqa: S307
        except Exception as e:  # noqa: BLE001 (shown as the interpreter would, last line only)
            out.append(f"{type(e).__module__}.{type(e).__name__}: {e}".removeprefix("builtins."))
            continue
        if value is not None:
            out.extend(repr(value).splitlines())
    return out


def _render_block(lang: str, body: list[str], mark: tuple[str, str] | None) -> list[str]:
    if mark is not None and mark[0] == "skip":
        return body
    if mark is not None and mark[0] == "include":
        return (ROOT / mark[1]).read_text().rstrip("\n").splitlines()
    if lang in ("text", "console", "") and body and body[0].startswith("$ "):
        command = body[0][2:]
        if command.startswith(("memplan ", "python -m ")):
            return [body[0], *run_command(command).splitlines()]
    if lang == "python" and body and body[0].startswith(">>> "):
        return run_python(body)
    return body


def render_text(text: str) -> str:
    """`text` (markdown) with every marked block's output regenerated."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    mark = None
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m is None:
            found = MARK.match(line)
            if found:
                mark = (found.group(1), found.group(2).strip("() "))
            elif line.strip():
                mark = None
            out.append(line)
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        out.append(line)
        out.extend(_render_block(m.group(1), lines[i + 1:end], mark))
        if end < len(lines):
            out.append(lines[end])
        mark = None
        i = end + 1
    return "\n".join(out)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in DOCS:
        path = ROOT / name
        old = path.read_text()
        new = render_text(old)
        if new != old:
            stale.append(name)
            if not check:
                path.write_text(new)
    if check and stale:
        print("Stale command output in: " + ", ".join(stale) + ". Run: python docs/render.py", file=sys.stderr)
        return 1
    print(("Rewrote: " + ", ".join(stale)) if stale else "All docs are up to date.")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
