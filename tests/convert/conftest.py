"""Fixtures of the convert tests."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from convert_helpers import save_random_qwen2  # noqa: E402


@pytest.fixture(scope="session")
def qwen2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    model = save_random_qwen2(folder)
    return folder, model
