"""Fixtures of the convert tests."""

import pytest

from tests.convert.convert_helpers import save_random_qwen2


@pytest.fixture(scope="session")
def qwen2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    model = save_random_qwen2(folder)
    return folder, model
