"""requirements.txt, the deploy's manifest, is in step with pyproject.toml and constraints.txt.

A Heroku-style Python buildpack installs requirements.txt and nothing else, so it must
hold exactly the production dependencies (pyproject.toml's ``dependencies``, their extras
and everything they need, never the ``local`` or ``dev`` extras) at the versions the
suite runs with (constraints.txt), each with its hashes. ``make requirements`` writes it;
tests/test_deploy.py installs it in a clean virtualenv and runs the Procfile on it.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def logical_lines(path: Path) -> list[str]:
    """The file's requirement lines, continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def pinned(path: Path) -> dict[str, str]:
    """name → version of every ``name==version`` line."""
    pins = {}
    for line in logical_lines(path):
        requirement = Requirement(line.split(" --hash", 1)[0].strip())
        [specifier] = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {line} is not pinned with =="
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


REQUIREMENTS = pinned(ROOT / "requirements.txt")
CONSTRAINTS = pinned(ROOT / "constraints.txt")
PRODUCTION = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]


def needed_by(requirements: list[Requirement]) -> set[str]:
    """Every distribution these requirements pull in on this platform, read from the
    installed packages' metadata (the suite's virtualenv holds them all)."""
    seen: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()  # a package asked for with other extras
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = {""} | requirement.extras
        if (name, frozenset(extras)) in visited:
            continue
        visited.add((name, frozenset(extras)))
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            wanted = Requirement(line)
            if wanted.marker is None or any(
                wanted.marker.evaluate({"extra": extra}) for extra in extras
            ):
                # A dependency that one of our extras asks for, with its own extras.
                todo.append(Requirement(str(wanted).split(";", 1)[0]))
    return seen


def test_every_line_is_pinned_with_its_hashes():
    lines = logical_lines(ROOT / "requirements.txt")
    assert lines
    for line in lines:
        assert not line.startswith("-"), f"an option in requirements.txt: {line}"
        assert HASH.search(line), f"no hash: {line.split()[0]}"


def test_every_production_dependency_is_pinned_at_pyproject_version():
    for requirement in PRODUCTION:
        [specifier] = requirement.specifier
        name = canonicalize_name(requirement.name)
        assert REQUIREMENTS.get(name) == specifier.version, (
            f"{name}: pyproject.toml pins {specifier.version}, requirements.txt "
            f"{REQUIREMENTS.get(name)}; run `make requirements`"
        )


def test_it_holds_exactly_what_production_needs():
    """Nothing missing (an extra's package, a transitive dependency), nothing more."""
    wanted = needed_by(PRODUCTION)
    assert set(REQUIREMENTS) - wanted == set(), "not needed in production; `make requirements`"
    assert wanted - set(REQUIREMENTS) == set(), "missing; run `make requirements`"


@pytest.mark.parametrize("extra", ["local", "dev"])
def test_no_development_package_is_in_it(extra):
    for line in PYPROJECT["project"]["optional-dependencies"][extra]:
        name = canonicalize_name(Requirement(line).name)
        if name != "disparo":  # dev includes the local extra by name
            assert name not in REQUIREMENTS, f"{name} ({extra}) in requirements.txt"


def test_versions_are_constraints_versions():
    for name, version in REQUIREMENTS.items():
        assert CONSTRAINTS.get(name) == version, (
            f"{name}: constraints.txt has {CONSTRAINTS.get(name)}, requirements.txt {version}"
        )
