import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models' ops are too small to gain from threads; one thread avoids contention stalls on small machines."""
    import torch  # imported here: the environment above must be set before torch first loads

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def oracle(monkeypatch):
    """`evaluate` and `predict` segment with the per-pixel oracle of tests.helpers instead of a model
    (so no CLIP weights need to be there either)."""
    from ovss_cli.commands import common
    from tests.helpers import PixelOracle

    monkeypatch.setattr(common, "build_segmenter", lambda *args, **kwargs: PixelOracle(window=64))
    monkeypatch.setattr(common, "check_model_source", lambda *args, **kwargs: None)
