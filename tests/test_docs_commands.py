"""The guide cannot drift from the code: every `make` target, `python -m` module and subcommand, and `--config`
preset named in a fenced bash block of README.md or docs/*.md exists, and every relative link and #anchor between
the pages resolves (the pages are GitHub's headings' slugs apart)."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest

from preprocess.cli import COMMANDS as PREPROCESS_COMMANDS

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# python -m lightning_modules SUB: LightningCLI's subcommands and the commands main() dispatches
LIGHTNING_COMMANDS = {"fit", "validate", "test", "predict", "evaluate", "dub", "stream", "export", "adapt", "runs"}
FENCE = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def commands(page: Path) -> list[str]:
    """The lines of the page's bash blocks, continuation lines joined, comments dropped."""
    text = "\n".join(FENCE.findall(page.read_text()))
    return [re.sub(r"\s#.*$", "", line).strip() for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z0-9_-]+):", (REPO / "Makefile").read_text(), re.M))


def references(page: Path) -> list[tuple[str, str]]:
    """(kind, name) of every make target, module, subcommand and config preset the page's commands name."""
    found = []
    for line in commands(page):
        for part in re.split(r"[;&|]+", line):
            if m := re.match(r"\s*(?:\S+=\S+\s+)*make\s+(.*)", part):
                found += [("make", t) for t in m[1].split() if not t.startswith("-") and "=" not in t]
            if m := re.search(r"python3?\s+-m\s+([\w.]+)(?:\s+([\w-]+))?", part):
                found.append(("module", m[1]))
                if m[1] in ("lightning_modules", "preprocess") and m[2]:
                    found.append((m[1], m[2]))
            found += [("config", c) for c in re.findall(r"--config\s+(configs/[\w./-]+)", part)]
    return found


def exists(kind: str, name: str, targets: set[str]) -> bool:
    if kind == "make":
        return name in targets
    if kind == "module":
        return importlib.util.find_spec(name) is not None
    if kind == "lightning_modules":
        return name in LIGHTNING_COMMANDS
    if kind == "preprocess":
        return name in PREPROCESS_COMMANDS
    return (REPO / name).is_file()  # a config preset


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_the_guide_names_exists(page: Path) -> None:
    targets = make_targets()
    missing = sorted({f"{kind} {name}" for kind, name in references(page) if not exists(kind, name, targets)})
    assert not missing, f"{page.name} names what does not exist: {missing}"


@functools.cache
def anchors(page: Path) -> frozenset[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    found, repeats = set(), Counter()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{repeats[slug]}" if repeats[slug] else slug)
        repeats[slug] += 1
    return frozenset(found)


def broken_links(page: Path) -> list[str]:
    """The page's relative links whose file, or whose #anchor in a markdown page, does not exist."""
    broken = []
    for target in LINK.findall(re.sub(r"```.*?```", "", page.read_text(), flags=re.S)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{page.name} links to what does not exist: {broken}"


def test_the_link_checker_sees_a_missing_file_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## `adapt`: one person's video\n\n## Data\n\n### Data\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#adapt-one-persons-video) [b](other.md#data-1) [c](other.md#nope) [d](gone.md) "
                    "[e](https://example.org/x) [f](#title-here)\n\n# Title here\n")
    assert broken_links(page) == ["other.md#nope", "gone.md"]


def test_the_checker_sees_a_missing_target(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```bash\nmake demo\nmake no-such-target   # comment\npython -m lightning_modules fly --config configs/none.yaml\n```\n")
    found = set(references(page))
    assert {("make", "demo"), ("make", "no-such-target"), ("lightning_modules", "fly"), ("config", "configs/none.yaml")} <= found
    targets = make_targets()
    assert not exists("make", "no-such-target", targets) and not exists("lightning_modules", "fly", targets)
    assert not exists("config", "configs/none.yaml", targets) and exists("make", "demo", targets)
