"""`config.mesh.dcn`: the across-host part of the mesh axes, on simulated hosts of the 8 fake CPU devices."""

import jax
import numpy as np
import pytest

from jasper_jax.train.config_base import apply_override, base_config
from jasper_jax.train.mesh import make_mesh


def host_of(device, per_host):
    return jax.devices().index(device) // per_host


def test_dcn_data_across_two_hosts_keeps_fsdp_inside_each_host():
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1, "dcn": {"data": 2}}, hosts=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    hosts = np.vectorize(lambda d: host_of(d, 4))(mesh.devices)
    # every fsdp group (fixed data index) lies in one host; the data axis crosses them
    assert hosts[0].ravel().tolist() == [0] * 4 and hosts[1].ravel().tolist() == [1] * 4


def test_dcn_on_two_axes_and_inner_axes_in_order():
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": -1, "dcn": {"data": 2, "tensor": 2}}, hosts=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    hosts = np.vectorize(lambda d: host_of(d, 2))(mesh.devices)
    # (data, tensor) indices pick the host (granule order), fsdp stays inside one
    assert hosts[:, :, 0].tolist() == [[0, 0], [2, 2]] and hosts[:, :, 1].tolist() == [[1, 1], [3, 3]]


def test_dcn_sizes_that_do_not_match_the_hosts_are_refused():
    with pytest.raises(ValueError, match=r"config.mesh.dcn .* 2 hosts or slices"):
        make_mesh({"fsdp": -1, "dcn": {"data": 4}}, hosts=2)
    with pytest.raises(ValueError, match=r"config.mesh.dcn .* 1 hosts or slices .*processes: 1"):
        make_mesh({"fsdp": -1, "dcn": {"data": 2}})  # one real process
    with pytest.raises(ValueError, match=r"inside one of 2 hosts.* uses 2 devices but 4"):
        make_mesh({"fsdp": 2, "dcn": {"data": 2}}, hosts=2)
    with pytest.raises(ValueError, match="non-contiguous batch rows"):
        make_mesh({"data": 2, "fsdp": -1, "dcn": {"fsdp": 2}}, hosts=2)


def test_all_ones_dcn_is_the_single_level_mesh():
    plain = make_mesh({"data": 2, "fsdp": -1})
    same = make_mesh({"data": 2, "fsdp": -1, "dcn": {"data": 1, "fsdp": 1, "tensor": 1}}, hosts=2)
    assert (plain.devices == same.devices).all()


def test_config_override_reaches_the_settings():
    from jasper_jax.train.settings import settings_from_config

    config = base_config()
    apply_override(config, "mesh.dcn.data=2")
    mesh = settings_from_config(config).mesh
    assert mesh["dcn"] == {"data": 2, "fsdp": 1, "tensor": 1} and mesh["data"] == -1
