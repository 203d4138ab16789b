"""MkDocs hook (mkdocs.yml ``hooks:``): the command-line reference, written at build time from
the programs' own absl flags, so that it cannot drift from the code.

Each program runs in a process of its own (their absl flags clash in one process): it imports
``apps.<name>`` (which imports no TensorFlow) and prints its flags as JSON: name, type,
default, help and the module that defines it. The page ``cli.md`` holds the marker
``<!-- cli-flags -->``, which is replaced by one section per program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("train", "compare", "sample", "evaluate_generator", "pretrain")
MARKER = "<!-- cli-flags -->"
PAGE = "cli.md"

# run inside each program's process: its key flags (those its --help lists), as JSON
DUMP = r"""
import importlib, json, sys
from absl import flags
name = sys.argv[1]
module = importlib.import_module("apps." + name)
FLAGS = flags.FLAGS
out = []
for f in FLAGS.get_key_flags_for_module(module):
    default = f.default
    if isinstance(default, bool):
        default = "true" if default else "false"
    elif isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
    elif default is not None:
        default = str(default)
    out.append(dict(name=f.name, type=f.flag_type(), default=default, help=f.help or "",
                    module=FLAGS.find_module_defining_flag(f.name) or "",
                    values=sorted(getattr(f.parser, "enum_values", None) or [])))
doc = (module.__doc__ or "").strip()
json.dump(dict(doc=doc, flags=out), sys.stdout)
"""


def dump_flags(timeout: float = 60.0) -> dict[str, dict]:
    """{app: {"doc": module docstring, "flags": [...]}}, one process per program, all at
    once."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get(
                   "PYTHONPATH")])]))
    procs = {app: subprocess.Popen([sys.executable, "-c", DUMP, app], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for app in APPS}
    result = {}
    for app, p in procs.items():
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"listing the flags of apps.{app} failed (exit {p.returncode}):"
                               f"\n{err.strip()}")
        result[app] = json.loads(out)
    return result


def _cell(text: str) -> str:
    """Plain text as one Markdown table cell."""
    text = " ".join(str(text).split())
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("*", "\\*"),
                 ("_", "\\_"), ("`", "\\`"), ("[", "\\["), ("]", "\\]")):
        text = text.replace(a, b)
    return text


def _table(flags: list[dict]) -> list[str]:
    lines = ["| flag | type | default | help |", "|---|---|---|---|"]
    for f in sorted(flags, key=lambda f: f["name"]):
        default = "(none)" if f["default"] in (None, "") else f"`{f['default']}`"
        kind = f["type"]
        if f["values"]:
            kind += ": " + ", ".join(f["values"])
        lines.append(f"| `--{f['name']}` | {_cell(kind)} | {default} | {_cell(f['help'])} |")
    return lines


def _first_paragraph(doc: str) -> str:
    return doc.split("\n\n", 1)[0].strip() if doc else ""


def render(dumped: dict[str, dict]) -> str:
    """The Markdown of every program's flags."""
    train_names = {f["name"] for f in dumped.get("train", {}).get("flags", [])}
    md: list[str] = []
    for app in APPS:
        info = dumped[app]
        md += [f"## apps.{app}", ""]
        about = _first_paragraph(info["doc"])
        if about:
            md += [about, ""]
        own = [f for f in info["flags"] if f["module"] == f"apps.{app}"]
        shared = [f for f in info["flags"] if f["module"] != f"apps.{app}"]
        if app == "train":
            own, shared = info["flags"], []
        if own:
            md += _table(own) + [""]
        if shared:
            names = {f["name"] for f in shared}
            if app != "train" and names == train_names:
                md += [f"`apps.{app}` also takes every flag of [apps.train](#appstrain) "
                       "(above).", ""]
            else:
                md += ["Flags it shares with the other programs:", ""] + _table(shared) + [""]
    return "\n".join(md)


_cache: dict[str, str] = {}


def on_pre_build(config, **kwargs) -> None:  # noqa: ARG001 - MkDocs' hook signature
    _cache["cli"] = render(dump_flags())


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:  # noqa: ARG001
    if page.file.src_uri == PAGE:
        if MARKER not in markdown:
            raise RuntimeError(f"{PAGE} lacks the marker {MARKER}")
        return markdown.replace(MARKER, _cache.get("cli") or render(dump_flags()))
    return markdown


if __name__ == "__main__":
    print(render(dump_flags()))
