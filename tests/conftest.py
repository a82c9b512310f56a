"""Shared fixtures: the embedded model, tiny random models of every family, offline and headless."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per core across the xdist workers: OpenMP threads of two workers sharing a core wait
# for each other at every barrier (several times slower than one thread each). Subprocesses (CLI,
# notebooks, torchrun) inherit the variable.
# The xdist controller loads this file too (2 threads on 2 cores) and its workers inherit its environment, so
# a value this file set is replaced in each worker (1 thread each); a value the user set is kept.
_THREADS = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)))
_OURS = os.environ.get("HF_ATTN_INSPECT_TEST_THREADS")
if "OMP_NUM_THREADS" not in os.environ or _OURS == os.environ["OMP_NUM_THREADS"]:
    os.environ["OMP_NUM_THREADS"] = os.environ["HF_ATTN_INSPECT_TEST_THREADS"] = str(_THREADS)
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU, Triton kernels run in Triton's interpreter (tests/test_fused_kernel.py). Triton fixes
# the mode when it is first imported (transformers' model code imports it), so this comes before that.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tiny_models  # noqa: E402
from hf_attn_inspect import AttentionInspector  # noqa: E402

torch.set_num_threads(min(2, _THREADS))

SENTENCES = [
    "The cat sat on the mat.",
    "Hello, world!",
    "Attention is all you need, or so the paper said in 2017.",
    "A",
    "Transformers read every token at once, and attention decides which ones matter for each other.",
    "Is this padded?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Short one.",
]


def pytest_collection_modifyitems(config, items):
    """Heavy tests and xdist groups first, otherwise in the usual order: with ``-n``, the workers start on
    the long tests and the run ends with short ones instead of one worker finishing a long test while the
    other idles. A group moves as a whole, so the tests sharing a module fixture stay next to each other.
    (Under ``--dist loadgroup`` xdist itself sends the groups before single tests.)"""
    items.sort(key=lambda item: not (item.get_closest_marker("heavy") or item.get_closest_marker("xdist_group")))


@pytest.fixture(scope="session")
def inspector() -> AttentionInspector:
    """The embedded default model (all-MiniLM-L6-v2: 6 layers x 12 heads), on CPU."""
    return AttentionInspector.from_pretrained(device="cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny_models.tokenizer()


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: ``tiny_model(family)`` -> a tiny random model (cached per family)."""
    cache = {}

    def make(family: str):
        if family not in cache:
            cache[family] = tiny_models.build(family)
        return cache[family]

    return make


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: ``tiny_dir(family)`` -> a directory holding a saved tiny model and its tokenizer."""
    cache = {}

    def make(family: str) -> Path:
        if family not in cache:
            cache[family] = tiny_models.save(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return cache[family]

    return make


@pytest.fixture(scope="session")
def trained_decoder(tmp_path_factory, worker_id):
    """The tiny Llama of :func:`tiny_models.induction_decoder`, trained once per test run to do induction.

    Training is deterministic (fixed seeds), so under xdist the first worker that needs the model trains it
    and saves its weights in the run's shared temporary folder; the other worker waits on the lock and loads
    them instead of spending the same half minute of CPU again. A run without xdist simply trains."""
    from filelock import FileLock

    model = tiny_models.induction_decoder(0)
    if worker_id == "master":
        loss = tiny_models.train_induction(model)
    else:
        shared = tmp_path_factory.getbasetemp().parent / "trained_induction_decoder.pt"
        with FileLock(str(shared) + ".lock"):
            if shared.exists():
                saved = torch.load(shared)
                model.load_state_dict(saved["state"])
                model.eval()
                loss = saved["loss"]
            else:
                loss = tiny_models.train_induction(model)
                torch.save({"state": model.state_dict(), "loss": loss}, shared)
    assert loss < 0.5, f"training did not converge (loss {loss:.3f})"
    return model
