"""Installs that cannot be shadowed (issue 27).

The repository's files, as a clone has them, are copied into a folder named ``shapedsde``,
installed the way ``make install`` installs them (``pip install -e``, into a fresh virtual
environment whose other packages come from this one, so that nothing is downloaded), and the
README's example runs from the clone's parent folder. There the clone itself, a folder named
shapedsde without ``__init__.py``, is a candidate namespace package: with setuptools' default
editable install (an import hook that serves only what sys.path does not find) it shadowed the
package and the example failed with "module 'shapedsde' has no attribute 'ShapedAttention'".
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_EXAMPLE = re.compile(r"```python\n(.*?)```", re.S)


def readme_example(readme: Path) -> str:
    """The README's first Python example."""
    found = README_EXAMPLE.search(readme.read_text())
    assert found, f"{readme} has no ```python example"
    return found.group(1)


def copy_as_cloned(dest: Path) -> None:
    """The files a clone of this working tree has (tracked and untracked but not ignored, as
    they are now), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git working tree: nothing to clone")
    for name in filter(None, listed.stdout.split(b"\0")):
        src = REPO / os.fsdecode(name)
        if src.is_file():  # a tracked file deleted in the working tree is not cloned
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))


def _builds_offline() -> bool:
    """Whether this environment can build the editable wheel without build isolation:
    setuptools >= 70.1 (bdist_wheel built in) or the wheel package."""
    try:
        version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def fresh_environment(env_dir: Path) -> tuple[Path, dict[str, str]]:
    """A new virtual environment that sees this one's packages (a plain path entry: this
    environment's own .pth files, its install of shapedsde among them, are not run); its
    Python and a process environment without PYTHONPATH."""
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "_this_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return python, env


def test_readme_example_runs_from_the_parent_of_a_clone_named_shapedsde(tmp_path):
    clone = tmp_path / "shapedsde"
    copy_as_cloned(clone)
    python, env = fresh_environment(tmp_path / "env")
    offline = ["--no-build-isolation", "--no-index"] if _builds_offline() else []
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *offline,
                              "-e", str(clone)], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    (tmp_path / "example.py").write_text(readme_example(clone / "README.md"))
    run = subprocess.run([python, "example.py"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rho[0,1]" in run.stdout and "min p" in run.stdout
    assert "%|" not in run.stderr  # no progress bars from library calls

    which = subprocess.run([python, "-c", "import shapedsde; print(shapedsde.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert which.returncode == 0, which.stderr
    assert Path(which.stdout.strip()) == clone / "shapedsde" / "__init__.py"
