"""Fixtures of the convert tests."""

import pytest

from tests.convert.convert_helpers import save_random_qwen2


@pytest.fixture(scope="session")
def qwen2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    model = save_random_qwen2(folder)
    return folder, model


@pytest.fixture(scope="session")
def qwen3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3")
    model = save_random_qwen2(folder, family="qwen3", head_dim=16)
    return folder, model
