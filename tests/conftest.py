from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny():
    """A 1-block LLaMA with GQA: h=64, i=128, 4 heads, 2 kv heads, vocab 100 (49,856 parameters)."""
    return str(DATA / "tiny_llama.json")
