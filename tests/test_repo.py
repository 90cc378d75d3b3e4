"""Repository promises: CI runs the README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme.split("## Quick start", 1)[1].split("\n## ", 1)[0], re.S)
    assert len(blocks) == 2, "Quick start has exactly two commands"
    test_cmd = blocks[1].strip()
    assert "pytest" in test_cmd
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_the_readme_is_short_and_its_links_lead_somewhere():
    """The README was a 46 KB reference manual: it now says what segsearch is, the two commands,
    a dozen lines of use and where to read more (the manual in docs/, built by CI)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in re.findall(r":\s+([\w-]+\.md)$", nav, re.M):
        assert (ROOT / "docs" / page).is_file(), page
        assert f"docs/{page}" in readme or page == "index.md", f"the README does not point at docs/{page}"
