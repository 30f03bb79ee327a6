"""The documentation's Python examples run, with the short budgets they are written with (a few seconds each)."""

import re
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


def test_the_pages_with_examples_are_found():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES_WITH_CODE}
    assert {"docs/index.rst", "docs/guide/quickstart.rst", "README.md"} <= names
    assert {f"docs/modules/{name}.rst" for name in ("ppo_kl", "ppo_mask", "ppo_recurrent")} <= names


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_examples_run(page, tmp_path, monkeypatch):
    """Each page's blocks run in order, in one namespace (a later block may use an earlier one's names)."""
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
