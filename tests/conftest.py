"""Shared fixtures: the real GLUE data beside the repository, the real MiniLM, a small real cache."""

import os
import shutil
import sys
from pathlib import Path

import pytest

from ytune import ExtractConfig, extract, load_glue
from ytune.device import configure_cpu
from ytune.extract.encoder import load_encoder

sys.path.insert(0, str(Path(__file__).parent))  # test modules import helpers (cache_job, GLUE) by name
sys.path.insert(1, str(Path(__file__).parents[1] / "benchmarks"))  # and the benchmarks' (random_deberta)

# $YTUNE_GLUE_DIR (the Makefile sets it), else the shared data beside the repository.
GLUE = Path(
    os.environ.get("YTUNE_GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
)

configure_cpu(1)  # as the `ytune` command sets it for training: the tests call train() directly


def pytest_collection_modifyitems(config, items):
    if not GLUE.is_dir():
        skip = pytest.mark.skip(reason=f"no GLUE data at {GLUE}")
        for item in items:
            if "glue" in item.fixturenames:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def glue() -> Path:
    return GLUE


@pytest.fixture(scope="session")
def encoder():
    return load_encoder(None, "cpu")


@pytest.fixture(scope="session")
def sst2(tmp_path_factory, encoder, glue):
    """A cache of 300 training and 200 validation rows of SST-2, hidden states 5 and 6."""
    data = load_glue("sst2", ["train", "validation"], glue, limit=300)
    data.splits["validation"] = load_glue("sst2", ["validation"], glue, limit=200).splits["validation"]
    return extract(
        data, ExtractConfig(layers=(-2, -1), cache_dir=tmp_path_factory.mktemp("sst2")), encoder=encoder
    ).path


@pytest.fixture
def sst2_copy(sst2, tmp_path) -> Path:
    """A private copy of the sst2 cache, for tests that add label columns to it."""
    copy = tmp_path / "copy" / sst2.name
    shutil.copytree(sst2, copy)
    return copy
