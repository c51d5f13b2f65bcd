"""The README stays a short guide, and the documentation's numbers come from the files the
scripts write (issue 27). ``make docs`` builds the site itself (CI runs it); these checks need
no mkdocs: they render every page with the site's own hook."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location("docs_numbers", DOCS / "_hooks" / "numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def test_readme_is_a_short_guide():
    """Before: 586 lines, the first example at line 215, after a 150-line gallery."""
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 150
    first_block = text.split("```", 2)[1]
    commands = [line.split()[:2] for line in first_block.strip().splitlines()]
    assert commands[:2] == [["make", "demo"], ["make", "test"]]
    example = next(i for i, line in enumerate(lines) if line.startswith("```python"))
    assert example < 60
    for name in ("solve_sde", "simulate_network", "compare", "block_from_config"):
        assert name in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / page).is_file(), page


def test_no_paper_figures():
    """Before: the README called the package's own experiments "the paper figures"."""
    for path in [REPO / "README.md", *_pages()]:
        assert "paper figure" not in path.read_text().lower(), path.name


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_number_of_the_pages_is_found_where_its_script_writes_it(page):
    hook = _hook()
    text = page.read_text()
    rendered = hook.render(text)
    assert "{{" not in rendered and "}}" not in rendered


def test_a_number_that_is_not_written_fails_the_build(tmp_path):
    hook = _hook()
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "x.json").write_text('{"results": {"ks": {"32": 0.08}}}')
    assert hook.render("KS {{ figures/x.json results.ks.32 | .3f }}", tmp_path) == "KS 0.080"
    for bad in ("{{ figures/x.json results.ks.64 }}", "{{ figures/y.json results }}",
                "{{ figures/x.json }}", "{{ table figures/x.json }}"):
        with pytest.raises(hook.MissingNumber):
            hook.render(bad, tmp_path)


def test_gallery_shows_every_figure_with_its_numbers():
    from experiments import FIGURES

    gallery = (DOCS / "gallery.md").read_text()
    nav = (REPO / "mkdocs.yml").read_text()
    for name in FIGURES:
        assert f"(../figures/{name}.png)" in gallery, name
        assert f"figures/{name}.json" in gallery, name
        assert (REPO / "figures" / f"{name}.png").is_file()
        assert (REPO / "figures" / f"{name}.json").is_file()
    for page in re.findall(r":\s+([\w/-]+\.md)\s*$", nav, re.M):
        assert (DOCS / page).is_file(), page
