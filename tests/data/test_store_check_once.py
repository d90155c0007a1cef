"""`check_store_once`: the full value check once per store version, then sizes and row counts only.

A value corrupted after the first check (same size, same manifest) is what a restart must NOT read: the
proof that the restart skipped the value scan. A changed manifest (the store re-encoded) is a new version
and is checked in full again; a changed size is caught by the cheap check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jasper_jax.data import check as check_lib
from jasper_jax.data.check import check_store_once, marker_file, store_version_key
from jasper_jax.data.store import sha256_file
from tests.data.data_helpers import sample_texts, tree_hash


@pytest.fixture
def store(make_store):
    return make_store(sample_texts(10), dtype="float32", shard_rows=4)


def corrupt_row(path):
    """A NaN in store row 6 (teacher b, file 00001.bin, row 2): same size, manifest unchanged."""
    file = path / "b" / "00001.bin"
    data = np.fromfile(file, dtype=np.float32).reshape(4, 4)
    data[2, 1] = np.nan
    data.tofile(file)
    return file


def test_restart_checks_sizes_only_and_a_changed_manifest_checks_again(store, tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    before = tree_hash(store)
    assert check_store_once(store, marker_dir=markers) == ([], True)
    assert tree_hash(store) == before  # the marker goes to marker_dir, never into the store
    marker = json.loads(marker_file(markers, store_version_key(store)).read_text())
    assert marker["verify_checksums"] is True and marker["key"] == store_version_key(store)

    file = corrupt_row(store)
    reads = []
    real_scan = check_lib._scan_vectors
    monkeypatch.setattr(check_lib, "_scan_vectors", lambda *a, **k: reads.append(a[0]) or real_scan(*a, **k))
    assert check_store_once(store, marker_dir=markers) == ([], False)  # the restart: no value read
    assert reads == []

    # re-encoded: the manifest records the file's new checksum -> another version, checked in full
    manifest = json.loads((store / "manifest.json").read_text())
    for teacher in manifest["teachers"]:
        for shard in teacher["shards"]:
            if shard["file"] == "b/00001.bin":
                shard["sha256"] = sha256_file(file)
    (store / "manifest.json").write_text(json.dumps(manifest))
    problems, full = check_store_once(store, marker_dir=markers)
    assert full and reads and len(problems) == 1 and "NaN vectors in store row(s) 6 " in problems[0], problems
    # a failed check writes no marker: the next start checks in full again
    assert check_store_once(store, marker_dir=markers)[1] is True


def test_a_changed_size_is_caught_by_the_restart(store, tmp_path):
    markers = tmp_path / "markers"
    assert check_store_once(store, marker_dir=markers) == ([], True)
    file = store / "a" / "00000.bin"
    file.write_bytes(file.read_bytes()[:-4])
    problems, full = check_store_once(store, marker_dir=markers)
    assert not full and len(problems) == 1 and "a/00000.bin" in problems[0], problems


def test_a_check_without_checksums_does_not_stand_for_one_with(store, tmp_path):
    markers = tmp_path / "markers"
    assert check_store_once(store, marker_dir=markers, verify_checksums=False) == ([], True)
    assert check_store_once(store, marker_dir=markers, verify_checksums=False) == ([], False)
    assert check_store_once(store, marker_dir=markers, verify_checksums=True) == ([], True)
    assert check_store_once(store, marker_dir=markers, verify_checksums=False) == ([], False)


def test_no_marker_without_write_marker(store, tmp_path):
    markers = tmp_path / "markers"
    assert check_store_once(store, marker_dir=markers, write_marker=False) == ([], True)
    assert not markers.exists()


def test_training_start_checks_in_full_once(tmp_path, capsys):
    from jasper_jax.train.config_base import load_config
    from jasper_jax.train.loop import check_teacher_store, prepare_data
    from jasper_jax.train.settings import settings_from_config

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.py"
    config = load_config(str(tiny), [f"workdir={tmp_path}", "progress=false"])
    run = settings_from_config(config)
    paths = prepare_data(run)
    check_teacher_store(run, paths)
    check_teacher_store(run, paths)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("teacher store")]
    assert "full check" in lines[0] and "sizes and row counts" in lines[1], lines
    assert len(list((tmp_path / "store_checks").glob("store-check-*.json"))) == 1
