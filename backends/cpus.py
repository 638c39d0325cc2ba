"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

os.cpu_count() and torch's default count the host's cores. A container limited to fewer (Kubernetes
`limits.cpu`, `docker --cpus`, Cloud Run) that starts one thread per host core gets its threads
throttled in turn, and throughput collapses; so does a process pinned with `taskset`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Where the cgroup hierarchy is mounted; the server passes its LADLE_CGROUP_ROOT setting instead.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# Where cgroup v1 mounts the cpu controller, depending on the distribution.
V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True, slots=True)
class CpuCount:
    """A number of CPUs and where it came from (for the log line at start)."""

    count: int
    source: str


@dataclass(frozen=True, slots=True)
class Quota:
    """A cgroup CPU quota in CPUs (1.5 = one and a half CPUs of time per period), and its file."""

    cpus: float
    path: Path


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CpuCount:
    """The smaller of the affinity mask and the cgroup CPU quota (rounded up), at least 1."""
    affinity = affinity_cpus()
    quota = cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None and math.ceil(quota.cpus) < affinity:
        return CpuCount(max(1, math.ceil(quota.cpus)), f"cgroup CPU quota {quota.cpus:g} in {quota.path}")
    return CpuCount(affinity, "CPU affinity mask")


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on (all of them where there is no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cgroup_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Quota | None:
    """The tightest CPU quota of this process's cgroup and its ancestors (v2, else v1); None if none."""
    memberships = _memberships(proc_cgroup)
    if (cgroup_root / "cgroup.controllers").exists():
        dirs = _ancestors(cgroup_root, memberships.get("", "/"))
        return _tightest(_v2_quota(d) for d in dirs)
    for name in V1_CPU_DIRS:
        controller = cgroup_root / name
        if controller.is_dir():
            relative = memberships.get(name, memberships.get("cpu", "/"))
            return _tightest(_v1_quota(d) for d in _ancestors(controller, relative))
    return None


def _memberships(proc_cgroup: Path) -> dict[str, str]:
    """Controllers -> cgroup path, from lines like `0::/a/b` (v2) or `4:cpu,cpuacct:/a` (v1)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return {}
    result: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            result[parts[1]] = parts[2]
            for controller in parts[1].split(","):
                result.setdefault(controller, parts[2])
    return result


def _ancestors(mount: Path, relative: str) -> Iterator[Path]:
    """The cgroup's directory under the mount, then each parent up to the mount itself.

    Inside a cgroup namespace the path may not exist under the mount: the mount is then the cgroup.
    """
    current = mount / relative.strip("/")
    while current != mount and mount in current.parents:
        if current.is_dir():
            yield current
        current = current.parent
    yield mount


def _v2_quota(directory: Path) -> Quota | None:
    path = directory / "cpu.max"
    fields = _read(path).split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1], path)


def _v1_quota(directory: Path) -> Quota | None:
    path = directory / "cpu.cfs_quota_us"
    return _ratio(_read(path), _read(directory / "cpu.cfs_period_us"), path)


def _ratio(quota: str, period: str, path: Path) -> Quota | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:  # -1: no quota (v1)
        return None
    return Quota(quota_us / period_us, path)


def _tightest(quotas: Iterator[Quota | None]) -> Quota | None:
    found = [quota for quota in quotas if quota is not None]
    return min(found, key=lambda quota: quota.cpus, default=None)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
