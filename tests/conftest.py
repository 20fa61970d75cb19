"""Suite-wide settings."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory):
    """The trained plugin's model cache in a folder of this test session, not the user's ~/.cache (a test must
    not depend on, or write into, models another run left there; two suites running at once would share it),
    unless DECODERBENCH_CACHE says otherwise. Set before any worker or forkserver starts, so they inherit it."""
    if "DECODERBENCH_CACHE" in os.environ:
        yield
        return
    os.environ["DECODERBENCH_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    try:
        yield
    finally:
        os.environ.pop("DECODERBENCH_CACHE", None)
