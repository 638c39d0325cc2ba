"""The CPUs a process may use, from faked affinity masks and cgroup trees (v2 and v1)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from backends import cpus
from backends.cpus import CpuCount, cgroup_quota, usable_cpus
from handler.model import forward_threads


@pytest.fixture
def four_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def v2_tree(root: Path, cpu_max: dict[str, str], membership: str = "/") -> Path:
    """A cgroup v2 mount at root with cpu.max files at the given relative dirs; returns /proc/self/cgroup."""
    (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for relative, text in cpu_max.items():
        directory = root / relative
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(text + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{membership}\n")
    return proc


def v1_tree(root: Path, quota: int, period: int = 100_000, name: str = "cpu,cpuacct") -> Path:
    controller = root / name / "kubepods" / "pod1"
    controller.mkdir(parents=True)
    (controller / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (controller / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"5:memory:/kubepods/pod1\n4:{name}:/kubepods/pod1\n0::/\n")
    return proc


@pytest.mark.usefixtures("four_cpus")
@pytest.mark.parametrize(
    ("cpu_max", "count"),
    [
        ("max 100000", 4),
        ("100000 100000", 1),
        ("150000 100000", 2),
        ("50000 100000", 1),
        ("900000 100000", 4),
    ],
)
def test_v2_quota_at_the_mount_rounds_up_and_never_exceeds_the_affinity(
    tmp_path: Path, cpu_max: str, count: int
) -> None:
    root = tmp_path / "cgroup"
    found = usable_cpus(root, v2_tree(root, {"": cpu_max}))
    assert found.count == count
    assert ("cpu.max" in found.source) == (count < 4)


@pytest.mark.usefixtures("four_cpus")
def test_v2_takes_the_tightest_ancestor_of_the_process_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    tree = {
        "": "max 100000",
        "kube": "300000 100000",
        "kube/pod": "max 100000",
        "kube/pod/c": "200000 100000",
    }
    proc = v2_tree(root, tree, membership="/kube/pod/c")
    quota = cgroup_quota(root, proc)
    assert quota is not None and quota.cpus == 2 and quota.path == root / "kube/pod/c/cpu.max"
    assert usable_cpus(root, proc) == CpuCount(2, f"cgroup CPU quota 2 in {root / 'kube/pod/c/cpu.max'}")


@pytest.mark.usefixtures("four_cpus")
def test_v2_in_a_cgroup_namespace_reads_the_mount(tmp_path: Path) -> None:
    # /proc/self/cgroup names a path that the container's own mount does not have.
    root = tmp_path / "cgroup"
    assert usable_cpus(root, v2_tree(root, {"": "100000 100000"}, membership="/../../host/slice")).count == 1


@pytest.mark.usefixtures("four_cpus")
@pytest.mark.parametrize("name", ["cpu,cpuacct", "cpu"])
def test_v1_cfs_quota(tmp_path: Path, name: str) -> None:
    root = tmp_path / "cgroup"
    proc = v1_tree(root, quota=250_000, period=100_000, name=name)
    assert usable_cpus(root, proc).count == 3
    other = tmp_path / "other" / "cgroup"
    assert usable_cpus(other, v1_tree(other, quota=-1)).count == 4


@pytest.mark.usefixtures("four_cpus")
def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "absent", tmp_path / "absent-proc") == CpuCount(4, "CPU affinity mask")


def test_the_affinity_mask_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    root = tmp_path / "cgroup"
    assert usable_cpus(root, v2_tree(root, {"": "200000 100000"})) == CpuCount(1, "CPU affinity mask")


@pytest.mark.parametrize("garbage", ["", "nonsense", "0 100000", "100000 0", "-5 100000"])
@pytest.mark.usefixtures("four_cpus")
def test_unreadable_quotas_are_no_quota(tmp_path: Path, garbage: str) -> None:
    root = tmp_path / "cgroup"
    assert usable_cpus(root, v2_tree(root, {"": garbage})).count == 4


@pytest.mark.usefixtures("four_cpus")
def test_threads_setting_then_omp_then_the_cpus() -> None:
    assert forward_threads(3, {}) == CpuCount(3, "THREADS setting")
    assert forward_threads(0, {"OMP_NUM_THREADS": "2"}) == CpuCount(2, "OMP_NUM_THREADS variable")
    assert forward_threads(0, {"OMP_NUM_THREADS": "x"}).count >= 1


def test_the_server_logs_its_thread_count_and_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from handler import model as served
    from handler.config import Settings

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(served, "usable_cpus", lambda root: CpuCount(1, "cgroup CPU quota 0.5 in /x/cpu.max"))
    monkeypatch.setattr("backends.load_model", lambda *args, **kwargs: object())
    before = torch.get_num_threads()
    caplog.set_level(logging.INFO, logger="ladle")
    try:
        served.load_served_model(Settings())
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert (
        "torch uses 1 CPU thread(s) for the forward (from the cgroup CPU quota 0.5 in /x/cpu.max)"
        in caplog.text
    )
