"""mkdocs hook: the numbers of the pages come from the files the scripts write.

A page does not type a measured number; it names where the number is, and the build puts it
there:

* ``{{ figures/NAME.json KEY | FORMAT }}``: a value of a JSON file of the repository, KEY a
  dotted path (``results.ks.128``; list items by index), FORMAT a Python format spec
  (``.3f``, ``.1%``) or ``1/x`` (a step written 1/N); without FORMAT, ``str(value)``;
* ``{{ table benchmarks/results/NAME.json }}``: the table of a benchmark's result file
  (``TABLES`` below);
* ``{{ machine benchmarks/results/NAME.json }}``: the machine the benchmark recorded;
* ``{{ help COMMAND }}``: ``shapedsde COMMAND --help`` as printed (100 columns).

A missing file or key fails the build (``mkdocs build --strict``), so a page cannot quote a
number its scripts no longer write; ``tests/test_docs.py`` renders every page the same way.
The hook also serves the PNGs of ``figures/`` (outside ``docs/``) as ``figures/NAME.png``:
the pages link them as ``../figures/NAME.png``, which is right where the Markdown is read from
the repository, and the hook rewrites those links for the site.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\{\{\s*(?P<body>[^{}]+?)\s*\}\}")


class MissingNumber(ValueError):
    """A placeholder whose file or key does not exist."""


def load(name: str, root: Path = ROOT) -> Any:
    path = root / name
    if not path.is_file():
        raise MissingNumber(f"{name}: no such file (written by the script that makes it)")
    return json.loads(path.read_text())


def lookup(data: Any, key: str, name: str) -> Any:
    for part in key.split("."):
        try:
            data = data[int(part)] if isinstance(data, list) else data[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise MissingNumber(f"{name}: no {key!r} (at {part!r})") from None
    return data


def formatted(value: Any, spec: str | None) -> str:
    if value is None:
        return "none"
    if spec is None:
        return str(value)
    if spec == "1/x":
        return f"1/{round(1 / value)}"
    return format(value, spec)


def _sde_throughput(data: dict[str, Any]) -> str:
    rows = ["| m | paths | devices | first call (s) | solve_sde path-steps/s | plain scan /s "
            "| NumPy /s | x scan | x NumPy |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        q = r["rate"]
        rows.append(f"| {r['m']} | {r['n_paths']} | {r['devices']} | {r['first_call_s']:.1f} "
                    f"| {q['solve_sde']:.3g} | {q['scan']:.3g} | {q['numpy']:.3g} "
                    f"| {r['ratio_scan']:.2f} | {r['ratio_numpy']:.1f} |")
    return "\n".join(rows)


def _network_cost(data: dict[str, Any]) -> str:
    rows = ["| width | full: s per sample-layer | reduced: s per sample-layer | full / reduced |",
            "|---:|---:|---:|---:|"]
    for r in data["rows"]:
        full = r["full"]["s_per_sample_layer"] if r.get("full") else None
        reduced = r["reduced"]["s_per_sample_layer"]
        rows.append(f"| {r['width']} | {f'{full:.2e}' if full else 'skipped'} | {reduced:.2e} "
                    f"| {f'{full / reduced:.0f}' if full else '-'} |")
    return "\n".join(rows)


def machine(name: str, root: Path = ROOT) -> str:
    """The machine a benchmark ran on, as its result file records it."""
    info = load(name, root)["machine"]
    parts = [f"{info[k]}" for k in ("cpu",) if info.get(k)]
    if info.get("nproc"):
        parts.append(f"{info['nproc']} CPUs")
    if info.get("jax"):
        parts.append(f"jax {info['jax']} ({info.get('jax_backend', 'cpu')})")
    if info.get("load_average_at_start"):
        parts.append(f"load average {info['load_average_at_start'][0]:.1f} at the start "
                     "(other jobs shared the machine)")
    return ", ".join(parts) or "not recorded"


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "sde_throughput": _sde_throughput,
    "network_cost": _network_cost,
}
"""A table renderer for each benchmark result file (by file stem)."""


def command_help(command: str) -> str:
    """``shapedsde COMMAND --help`` at 100 columns, as a code block."""
    from shapedsde.cli import main

    out = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(out):
            main([command, "--help"] if command != "shapedsde" else ["--help"])
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "```\n" + out.getvalue().rstrip() + "\n```"


def render_one(body: str, root: Path = ROOT) -> str:
    words = body.split()
    if words[0] == "help" and len(words) == 2:
        return command_help(words[1])
    if words[0] == "machine" and len(words) == 2:
        return machine(words[1], root)
    if words[0] == "table" and len(words) == 2:
        stem = Path(words[1]).stem
        if stem not in TABLES:
            raise MissingNumber(f"{words[1]}: no table renderer ({', '.join(TABLES)})")
        return TABLES[stem](load(words[1], root))
    name, rest = body.split(None, 1) if " " in body else (body, "")
    key, _, spec = rest.partition("|")
    if not name.endswith(".json") or not key.strip():
        raise MissingNumber(f"placeholder {{{{ {body} }}}}: expected FILE.json KEY [| FORMAT]")
    return formatted(lookup(load(name, root), key.strip(), name), spec.strip() or None)


def render(markdown: str, root: Path = ROOT) -> str:
    """The page with every placeholder replaced (MissingNumber for the first that fails)."""
    return PLACEHOLDER.sub(lambda m: render_one(m.group("body"), root), markdown)


# -- mkdocs events ---------------------------------------------------------------------------

FIGURE_LINK = re.compile(r"\]\((?:\.\./)+figures/")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    depth = page.file.src_uri.count("/")  # the site's figures/ is at the root of the docs
    markdown = FIGURE_LINK.sub("](" + "../" * depth + "figures/", markdown)
    try:
        return render(markdown)
    except MissingNumber as err:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{page.file.src_uri}: {err}") from None


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for png in sorted((ROOT / "figures").glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files
