"""compile-check on a small config: the step compiles from abstract shapes and reports per-device memory;
with `--hosts`, the bytes its collectives move across simulated hosts respond to the mesh layout."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_compile_check_reports_memory_and_budget():
    command = [
        sys.executable,
        "-m",
        "jasper_jax",
        "compile-check",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--stage",
        "3",
        "--devices",
        "4",
        "--config.mesh.data=1",
        "--config.mesh.fsdp=-1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mesh: {'data': 1, 'fsdp': 4, 'tensor': 1}" in result.stdout, result.stdout
    assert "temp_size_in_bytes" in result.stdout and "fits" in result.stdout
    over = subprocess.run(command + ["--budget-gb", "0"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert over.returncode == 1 and "DOES NOT FIT" in over.stdout, over.stdout
    hosts = [*command[: command.index("--devices")], "--devices", "8", "--hosts", "2", *command[-2:]]
    two = subprocess.run(hosts + ["--config.mesh.dcn.data=2"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "mesh: {'data': 2, 'fsdp': 4, 'tensor': 1}" in two.stdout, two.stdout
    assert "moved across the 2 simulated hosts (an estimate" in two.stdout, two.stdout


def across_hosts(*overrides):
    """compile-check's across-host figure for the tiny config's stage 3 on the 8 test devices as 2 hosts."""
    from jasper_jax.train.compile_check import compile_stage_step
    from jasper_jax.train.config_base import load_config

    config = load_config(str(ROOT / "configs" / "tiny.py"), ["model.source=random", *overrides])
    _, summary = compile_stage_step(config, 3, hosts=2)
    return summary["mesh"], summary["across_host_bytes"]


def test_across_host_bytes_follow_the_layout():
    """Data across the 2 hosts and fsdp inside them: only the gradient reduction and the batch-wide gathers
    cross hosts; fsdp across the hosts (dcn fsdp 2) adds every parameter gather and gradient reduce-scatter."""
    mesh, inside = across_hosts("mesh.data=1", "mesh.fsdp=-1", "mesh.dcn.data=2")
    assert mesh == {"data": 2, "fsdp": 4, "tensor": 1}, mesh
    mesh, spanning = across_hosts("mesh.data=1", "mesh.fsdp=-1", "mesh.dcn.fsdp=2")
    assert mesh == {"data": 1, "fsdp": 8, "tensor": 1}, mesh
    assert inside["unparsed"] == 0 and spanning["unparsed"] == 0, (inside, spanning)
    assert 0 < inside["total"] < spanning["total"], (inside, spanning)
    assert inside["total"] == sum(value for key, value in inside.items() if key not in ("total", "unparsed"))


def test_device_groups_of_each_replica_group_format():
    from jasper_jax.train.compile_check import across_host_bytes, device_groups

    two_blocks = [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert device_groups("x = f32[8]{0} all-gather(%p), replica_groups=[2,4]<=[8], dimensions={0}") == two_blocks
    assert device_groups("all-reduce(%p), replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%a") == [
        [0, 4],
        [1, 5],
        [2, 6],
        [3, 7],
    ]
    mesh = "replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}"
    assert device_groups(f"all-gather(%p), {mesh}") == two_blocks
    assert device_groups("all-gather(%p), replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}") == [list(range(8))]
    assert device_groups("all-reduce(%p), replica_groups={{0,1},{2,3}}, to_apply=%a") == [[0, 1], [2, 3]]
    assert device_groups("all-reduce(%p), replica_groups={}, to_apply=%a") == []
    assert device_groups("collective-permute(%p), source_target_pairs={{0,4},{1,5}}") == [[0, 4], [1, 5]]
    hosts = [0] * 4 + [1] * 4
    hlo = "\n".join(
        [
            "%a = f32[32]{0} all-gather(%p), replica_groups=[2,4]<=[8], dimensions={0}",  # inside each host
            "%b = bf16[16]{0} all-reduce(%p), replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add",  # across: 32 B
            "%c = f32[64]{0} all-gather(%p), replica_groups={}, dimensions={0}",  # across: operand 64 * 4 / 8
        ]
    )
    assert across_host_bytes(hlo, hosts) == {"total": 64, "unparsed": 0, "all-reduce": 32, "all-gather": 32}
