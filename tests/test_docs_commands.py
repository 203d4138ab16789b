"""The commands the documentation shows still parse, and README.md stays a first page.

Every ``python -m apps.<program> ...`` in README.md and docs/**/*.md (in a code block or an
inline code span; backslash continuations joined, ``{a,b}`` alternatives one command each,
``<placeholders>`` filled in) is parsed by absl with the program's current flags, in one
process per program (their flags clash in one process; importing an app loads no
TensorFlow). A flagfile a command names must exist. The README's Python snippet is checked
against the code without running it (a run takes about a minute on 2 cores).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
APPS = ("train", "compare", "sample", "evaluate_generator", "pretrain")
COMMAND = re.compile(r"python -m apps\.(\w+)")
HELP = {"--help", "--helpfull", "--helpshort", "--helpxml"}


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _args_of(rest: str) -> list[list[str]]:
    """The argument lists of one command's text after ``python -m apps.NAME``: one list per
    alternative of its ``{a,b}`` groups, taken side by side (``--scenario={task,class}
    --output_dir=fig3_{task,class}`` is two commands, as the docs mean it)."""
    rest = re.sub(r"<[^>]*>", "X", rest)          # <a run's export ...> -> one placeholder
    rest = re.split(r"\s(?:#|;|&&|\|\||\||>)", " " + rest)[0]   # comment, next command, pipe
    groups = re.findall(r"\{([^{}]*,[^{}]*)\}", rest)
    k = max((len(g.split(",")) for g in groups), default=1)
    assert all(len(g.split(",")) == k for g in groups), f"brace groups differ in size: {rest}"
    argvs = []
    for i in range(k):
        one = re.sub(r"\{([^{}]*,[^{}]*)\}", lambda m, i=i: m.group(1).split(",")[i], rest)
        argvs.append(one.split())
    return argvs


def collect_commands() -> dict[str, list[tuple[str, list[str]]]]:
    """{app: [(where, args), ...]} for every command shown in README.md and docs/."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for path in doc_files():
        text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))  # continuations
        in_fence = False
        for n, line in enumerate(text.split("\n"), 1):
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            block = in_fence or (line.startswith("    ") and
                                 line.lstrip().startswith("python -m apps."))
            for m in COMMAND.finditer(line):
                before = line[:m.start()]
                inline = before.count("`") % 2 == 1
                if not (inline or block):
                    continue   # prose that names a command, not one to run
                rest = line[m.end():]
                if inline:
                    rest = rest.split("`", 1)[0]
                where = f"{path.relative_to(ROOT)}:{n}"
                for args in _args_of(rest):
                    found.setdefault(m.group(1), []).append((where, args))
    return found


# run in one process per program: parse each command's flags, report what absl refused
PARSE = r"""
import importlib, json, sys
from absl import flags
name, commands = sys.argv[1], json.loads(sys.stdin.read())
importlib.import_module("apps." + name)
FLAGS = flags.FLAGS
failed = []
for where, args in commands:
    try:
        rest = FLAGS(["prog", *args])
        if len(rest) > 1:
            failed.append([where, args, f"stray arguments {rest[1:]}"])
    except flags.Error as e:
        failed.append([where, args, str(e)])
    finally:
        FLAGS.unparse_flags()
json.dump(failed, sys.stdout)
"""

COMMANDS = collect_commands()


def test_commands_are_found():
    """The collector sees the commands it is meant to check (a change of the docs' format
    that hid them would pass every parse below)."""
    assert set(COMMANDS) <= set(APPS), f"commands of unknown programs: {set(COMMANDS) - set(APPS)}"
    assert set(COMMANDS) == set(APPS), f"no command shown for {set(APPS) - set(COMMANDS)}"
    readme = [w for cmds in COMMANDS.values() for w, _ in cmds if w.startswith("README.md")]
    assert len(readme) >= 3
    assert sum(len(c) for c in COMMANDS.values()) >= 30
    demo = [a for w, a in COMMANDS["train"] if w.startswith("README.md")]
    assert ["--flagfile=apps/configs/demo.cfg"] in demo


def _parse(app: str, commands: list[tuple[str, list[str]]]) -> list[list]:
    """[where, args, why] of each command absl refuses, parsed in one process."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get(
                   "PYTHONPATH")])]))
    p = subprocess.run([sys.executable, "-c", PARSE, app], input=json.dumps(commands),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_a_wrong_command_is_caught():
    """The check itself refuses what the programs refuse: an unknown flag, a stray argument,
    a value of the wrong type, a flagfile that is not there."""
    bad = [("a", ["--no_such_flag=1"]), ("b", ["stray"]), ("c", ["--n=many"]),
           ("d", ["--flagfile=apps/configs/no_such.cfg"]), ("ok", ["--n=4"])]
    assert [w for w, _, _ in _parse("sample", bad)] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("app", APPS)
def test_docs_commands_parse(app):
    commands = [(w, a) for w, a in COMMANDS.get(app, []) if not HELP & set(a)]
    for where, args in commands:
        for a in args:
            if a.startswith("--flagfile="):
                assert (ROOT / a.split("=", 1)[1]).is_file(), f"{where}: no flagfile {a}"
    failed = _parse(app, commands)
    assert not failed, "\n".join(f"{w}: python -m apps.{app} {' '.join(a)}\n    {why}"
                                 for w, a, why in failed)


def _readme_python() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_python_snippet_matches_the_code():
    """The README's Python lines name what exists: the imports, ``Config``'s fields and
    ``experiment.run``'s parameters (read from the source: importing the runner loads
    TensorFlow). Run for real once, it trains the digits demo in about a minute."""
    from bir_keras.config import Config

    blocks = _readme_python()
    assert blocks, "README.md shows no Python"
    fields = {f.name for f in dataclasses.fields(Config)}
    src = (ROOT / "bir_keras" / "experiment.py").read_text(encoding="utf-8")
    run = next(n for n in ast.parse(src).body
               if isinstance(n, ast.FunctionDef) and n.name == "run")
    params = [a.arg for a in run.args.args]
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("bir_keras"):
                for alias in node.names:
                    mod = ROOT / Path(*node.module.split("."))
                    sub = mod / alias.name
                    assert mod.with_suffix(".py").is_file() or sub.with_suffix(".py").is_file() \
                        or (sub / "__init__.py").is_file(), f"no {node.module}.{alias.name}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Config":
                assert not node.args
                assert {k.arg for k in node.keywords} <= fields
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "run" and getattr(node.func.value, "id", "") == "experiment":
                assert len(node.args) <= len(params)
                assert {k.arg for k in node.keywords} <= set(params)


def test_readme_is_a_first_page():
    """At most ~250 lines; its paragraphs name no machine, date or commit (those stand
    with the measurements in docs/); it keeps the two commands of a fresh machine, and CI
    runs its test command."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for pattern in (r"\b20\d\d-\d\d-\d\d\b", r"\b(EPYC|Xeon|AMX|AVX\w*|Intel|AMD)\b",
                    r"(?<![\w.-])[0-9a-f]{7,40}(?![\w.-])"):
        hits = [m.group(0) for m in re.finditer(pattern, prose)
                if not m.group(0).isdigit()]
        assert not hits, f"README.md names {hits} (move it to docs/)"
    assert "    python -m apps.train --flagfile=apps/configs/demo.cfg\n" in text
    assert "    python -m pytest -q\n" in text
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_cli_reference_lists_every_flag():
    """The docs' build hook (tools/docs_hooks.py) writes a section per program with every
    flag its --help lists (this runs without MkDocs installed)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import docs_hooks
    finally:
        sys.path.remove(str(ROOT / "tools"))
    dumped = docs_hooks.dump_flags()
    page = docs_hooks.render(dumped)
    for app in APPS:
        assert f"## apps.{app}\n" in page
        own = [f["name"] for f in dumped[app]["flags"]
               if app == "train" or f["module"] == f"apps.{app}"]
        assert own, app
        for name in own:
            assert f"| `--{name}` |" in page, (app, name)
