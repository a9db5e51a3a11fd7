import sys
from pathlib import Path

import os

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so CI on a clean clone cannot go red by
# chance; HYPOTHESIS_PROFILE=explore draws new ones (run it after changing the rules).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny():
    """A 1-block LLaMA with GQA: h=64, i=128, 4 heads, 2 kv heads, vocab 100 (49,856 parameters)."""
    return str(DATA / "tiny_llama.json")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tests that use torch run with one intra-op thread: their tensors are small, and on a
    shared 2-core CI machine the thread pool stalls. Tests without torch are untouched
    (torch is not imported here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
