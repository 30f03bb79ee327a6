"""The documentation's Python examples run, with the short budgets they are written with (a few seconds each)."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch as th

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.rst")) + sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
PAGES = [page for page in PAGES if "_build" not in page.parts]


def python_blocks(page: Path) -> list[str]:
    """The ``python`` code blocks of a reStructuredText or Markdown page, in order."""
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".md":
        return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    blocks = []
    for match in re.finditer(r"^( *)\.\. code-block:: python\n((?:\1 +:.*\n)*)\n", text, flags=re.MULTILINE):
        lines = []
        for line in text[match.end() :].splitlines():
            if line.strip() and not line.startswith(match.group(1) + " "):
                break
            lines.append(line)
        blocks.append(textwrap.dedent("\n".join(lines)))
    return blocks


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]
README = ROOT / "README.md"
README_BLOCKS = python_blocks(README)


def test_the_pages_with_examples_are_found():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES_WITH_CODE}
    assert {"docs/index.rst", "docs/guide/quickstart.rst", "README.md"} <= names
    assert {f"docs/modules/{name}.rst" for name in ("ppo_kl", "ppo_mask", "ppo_recurrent")} <= names


@pytest.mark.parametrize(
    "page", [page for page in PAGES_WITH_CODE if page != README], ids=lambda page: page.relative_to(ROOT).as_posix()
)
def test_examples_run(page, tmp_path, monkeypatch):
    """Each page's blocks run in order, in one namespace (a later block may use an earlier one's names).
    The README's blocks are each run alone, below."""
    monkeypatch.chdir(tmp_path)  # examples save models and logs in the working directory
    threads = th.get_num_threads()
    namespace = {"__name__": "__main__"}
    try:
        for index, block in enumerate(python_blocks(page)):
            exec(compile(block, f"{page.name}[block {index}]", "exec"), namespace)  # noqa: S102 (the docs' own code)
    finally:
        th.set_num_threads(threads)
        env = namespace.get("env")
        if hasattr(env, "close"):
            env.close()


def test_readme_is_short_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 15_000
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links into docs/"
    for link in links:
        assert (ROOT / link).exists(), link


@pytest.mark.parametrize("index", range(len(README_BLOCKS)), ids=lambda index: f"block {index}")
def test_each_readme_block_runs_alone_in_a_fresh_interpreter(index, tmp_path):
    """As a reader pastes one block into a new Python: its own imports, the package as installed, an empty folder."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", README_BLOCKS[index]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,  # checked below, with the block and its output in the message
    )
    assert result.returncode == 0, f"README block {index}:\n{README_BLOCKS[index]}\n{result.stderr[-3000:]}"


def test_readme_commands_use_the_venv_they_install():
    """Every command in the README runs the project's venv's Python or scripts, as the install command makes it."""
    readme = README.read_text(encoding="utf-8")
    # a command starts a line (in a code block), an inline `code span` or follows `&&`, and has arguments
    programs = r"(python3?|pip|pytest|ruff|mypy|sphinx-build|twine|sb3-ppo-kl(?:-zoo)?)"
    commands = re.findall(rf"(?:^[ \t]*|`|&&[ \t]*){programs}(?= )", readme, flags=re.MULTILINE)
    assert commands == ["python3"], "use .venv/bin/ (only `python3 -m venv` makes the venv)"
    assert readme.count(".venv/bin/python -m sb3_ppo_kl.zoo") == 2 and ".venv/bin/sb3-ppo-kl " in readme


def test_the_readme_sections_the_examples_cite_exist():
    headings = set(re.findall(r"^#+ (.+)$", README.read_text(encoding="utf-8"), flags=re.MULTILINE))
    cited = {
        section
        for example in sorted((ROOT / "examples").glob("*.py"))
        for section in re.findall(r'README, "([^"]+)"', example.read_text(encoding="utf-8"))
    }
    assert "Speed" in cited and cited <= headings, cited - headings
