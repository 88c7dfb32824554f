"""Fixtures only (helpers.py holds what tests import): the real embedded encoder (loaded once), a tiny random
BERT, a hash encoder, a per-session export directory."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
from helpers import HashEncoder, make_tiny_bert

from embedcache import load_encoder


@pytest.fixture(scope="session", autouse=True)
def export_home(tmp_path_factory):
    """Exports and auto choices go to a directory of this session, not the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("embedcache-home")
        mp.setenv("EMBEDCACHE_HOME", str(home))
        yield home / "exports"


@pytest.fixture
def hash_encoder():
    return HashEncoder()


@pytest.fixture(scope="session")
def minilm():
    """The embedded all-MiniLM-L6-v2, loaded once per test session."""
    return load_encoder()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_dir):
    return load_encoder(str(tiny_bert_dir))
