"""The wheels carried to the GPU machine: are they the pinned ones, do they fit, and are they
what Python imports there.

    python -m bench.gpu_wheels carry      # here, after `make gpu-wheels`: pins, sizes, 64 MiB
    python -m bench.gpu_wheels installed  # there, after the install: ladle's requirements met

The GPU machine cannot reach a package index; its image lacks some of ladle's dependencies
and holds others too old (bench/gpu_wheels.txt says which), so they travel as wheels in .whl/
and are installed into a folder put first on PYTHONPATH (bench/gpu_run.sh).
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "bench" / "gpu_wheels.txt"
CARRY_LIMIT = 64 * 2**20  # what one device call carries: working tree and carried paths together
# Imported after the version checks: a package's own import-time checks (transformers checks
# its dependencies' versions) fail here in seconds rather than minutes into the check.
IMPORTS = ("transformers", "bitsandbytes", "starlette", "uvicorn", "pydantic", "handler.cli")


def normalize(name: str) -> str:
    """PEP 503: a distribution's name as indexes compare it."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class Wheel:
    name: str  # normalized
    version: str
    path: Path

    @classmethod
    def from_path(cls, path: Path) -> Wheel:
        name, version = path.name.split("-")[:2]
        return cls(normalize(name), version, path)


def read_pins(path: Path = PINS) -> dict[str, str]:
    """Normalized name -> version, from `name==version` lines (comments and blanks skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name.strip())] = version.strip()
    return pins


def carry_problems(pins: dict[str, str], wheels: list[Wheel]) -> list[str]:
    """Why these wheels are not exactly the pinned ones, one version each (empty when they are)."""
    problems: list[str] = []
    found: dict[str, list[Wheel]] = {}
    for wheel in wheels:
        found.setdefault(wheel.name, []).append(wheel)
    for name, version in pins.items():
        have = found.get(name, [])
        if not any(w.version == version for w in have):
            problems.append(f"{name}=={version}: no wheel (run `make gpu-wheels`)")
    for name, have in found.items():
        for wheel in have:
            if pins.get(name) != wheel.version:
                problems.append(f"{wheel.path.name}: not pinned in {PINS.name}; remove it (one version each)")
    return problems


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what a device call sends: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file()
    )


def carry(wheel_dir: Path) -> int:
    wheels = [Wheel.from_path(p) for p in sorted(wheel_dir.glob("*.whl"))]
    problems = carry_problems(read_pins(), wheels)
    tree = tree_bytes()
    total = tree + sum(w.path.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.path.stat().st_size / 2**20:8.1f} MiB  {wheel.path.name}")
    print(f"{tree / 2**20:8.1f} MiB  working tree (tracked and untracked, not ignored)")
    print(f"{total / 2**20:8.1f} MiB  in all, of {CARRY_LIMIT / 2**20:.0f} MiB a call carries")
    if total > CARRY_LIMIT:
        problems.append(f"{total / 2**20:.1f} MiB is over the {CARRY_LIMIT / 2**20:.0f} MiB a call carries")
    for problem in problems:
        print(f"gpu_wheels: {problem}", file=sys.stderr)
    return 1 if problems else 0


def requirements() -> list[str]:
    """ladle's dependencies and the int8 extra, as pyproject.toml states them."""
    import tomllib  # Python 3.11+, as on the GPU machine (3.12); `carry` does not need it

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["int8"]]


def installed(wheel_dir: Path) -> int:
    """Each requirement met by what Python imports here, and each carried wheel the one it finds."""
    from packaging.requirements import Requirement

    problems: list[str] = []
    for line in requirements():
        requirement = Requirement(line)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement}: not installed")
            continue
        ok = requirement.specifier.contains(dist.version, prereleases=True)
        where = dist.locate_file("")
        print(
            f"{'ok ' if ok else 'BAD'} {requirement.name} {dist.version} ({requirement.specifier}) from {where}"
        )
        if not ok:
            problems.append(f"{requirement.name} {dist.version} does not satisfy {requirement}")
    for wheel in (Wheel.from_path(p) for p in sorted(wheel_dir.glob("*.whl"))):
        try:
            version = metadata.version(wheel.name)
        except metadata.PackageNotFoundError:
            version = "not found"
        if version != wheel.version:
            problems.append(f"{wheel.path.name} is carried but Python finds {wheel.name} {version}")
    for module in IMPORTS if not problems else ():
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is the finding to report
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    for problem in problems:
        print(f"gpu_wheels: {problem}", file=sys.stderr)
    return 2 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__)
    parser.add_argument("what", choices=("carry", "installed"))
    parser.add_argument("--wheels", default=str(ROOT / ".whl"), help="the wheel folder (.whl)")
    args = parser.parse_args(argv)
    folder = Path(args.wheels)
    return carry(folder) if args.what == "carry" else installed(folder)


if __name__ == "__main__":
    sys.exit(main())
