"""heads select: what to label next (issue 25, a first slice: random and diversity, quotas, near-duplicates)."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from helpers import one_line_error
from helpers import run as run_command

from embedcache import EmbeddingCache, Encoder
from heads.cli import main
from heads.labels.selection import select

CLUSTERS = 5


class ClusterEncoder(Encoder):
    """Texts 'c<k> ...' land near the k-th of 5 orthogonal directions (cosine within a cluster about 0.99)."""

    def __init__(self):
        super().__init__()
        self.name, self.dim = "clusters", 16

    def describe(self):
        return {"backend": "clusters", "dim": self.dim}

    def _encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            out[row] = np.random.default_rng(seed).normal(0, 0.02, self.dim)
            out[row, int(text[1])] += 1.0
        return out


def corpus(n_per=20):
    texts = [f"c{k} item {i}" for k in range(CLUSTERS) for i in range(n_per)]
    return pd.DataFrame({"id": range(len(texts)), "text": texts, "language": ["en"] * 60 + ["hi"] * 30 + ["bn"] * 10})


@pytest.fixture
def cache(tmp_path):
    store = EmbeddingCache(tmp_path / "c", ClusterEncoder())
    store.add(corpus().text.tolist())
    return store


def cluster_of(table):
    return [int(t[1]) for t in table.text]


def test_diversity_covers_every_cluster_before_a_second_from_any(cache):
    five = select(cache, corpus(), {"text": "text"}, 5, "diversity", skip_above=0.999, progress=False)
    assert sorted(cluster_of(five)) == list(range(CLUSTERS))
    ten = select(cache, corpus(), {"text": "text"}, 10, "diversity", skip_above=0.999, progress=False)
    assert sorted(cluster_of(ten)[:CLUSTERS]) == list(range(CLUSTERS))  # in the order picked
    assert ten.reason.iloc[0].startswith("diversity: first pick") and "farthest" in ten.reason.iloc[1]


def test_near_duplicates_of_labelled_rows_are_never_picked(cache):
    labeled = corpus().iloc[[0]]  # one row of cluster 0: its cluster (cosine > 0.95) counts as labelled
    picked = select(cache, corpus(), {"text": "text"}, 10, "diversity", labeled=labeled, progress=False)
    assert 0 not in cluster_of(picked)
    assert sorted(cluster_of(picked)) == [1, 2, 3, 4]  # then each pick's own near-duplicates are taken too


def test_quotas_hold_per_group_and_a_seed_decides(cache):
    picked = select(cache, corpus(), {"text": "text"}, 10, "random", group_col="language", progress=False)
    assert picked.group.value_counts().to_dict() == {"en": 6, "hi": 3, "bn": 1}
    again = select(cache, corpus(), {"text": "text"}, 10, "random", group_col="language", progress=False)
    other = select(cache, corpus(), {"text": "text"}, 10, "random", group_col="language", seed=1, progress=False)
    assert picked.equals(again) and not picked.equals(other)


def test_the_command_writes_a_table_ready_to_annotate(cache, tmp_path, capsys):
    corpus().to_csv(tmp_path / "data.csv", index=False)
    args = [
        "select",
        "--cache",
        cache.path,
        "--data",
        tmp_path / "data.csv",
        "--budget",
        "4",
        "--group-col",
        "language",
    ]
    code, out, err = run_command(main, capsys, *args, "--out", tmp_path / "to_label.csv", "--json")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "to_label.csv")
    assert list(table.columns) == ["id", "text", "group", "reason"] and len(table) == 4
    code, _, err = run_command(main, capsys, *args, "--out", tmp_path / "data.csv", "--overwrite")
    one_line_error(code, err, "is the input --data")


def test_uncertainty_and_hybrid_follow_the_ensembles_disagreement(cache, tmp_path, capsys):
    from embedcache import ParameterError
    from heads import HeadModel

    data = corpus()
    rated = data[data.text.str[1].astype(int) < 3].assign(y=lambda d: d.text.str[1].astype(float))
    model = HeadModel(head="concat", ensemble=3, epochs=3, width=16).fit(rated, "y", cache=cache, progress=False)
    _, spread = model.predict(data, cache=cache, std=True)
    disagreement = spread / model.std_[0]
    picked = select(cache, data, {"text": "text"}, 4, "uncertainty", skip_above=0.999, model=model, progress=False)
    assert sorted(picked.id) == sorted(np.argsort(-disagreement)[:4])  # no near-duplicates among the top 4 here
    assert picked.reason.iloc[0].startswith("uncertainty: the members disagree by")
    hybrid = select(cache, data, {"text": "text"}, 3, "hybrid", skip_above=0.999, model=model, progress=False)
    assert hybrid.id.iloc[0] == int(np.argmax(disagreement))  # nothing labelled: every distance is the same
    assert len(set(cluster_of(hybrid))) == 3  # then far from what it picked: a cluster each
    with pytest.raises(ParameterError, match="ranks rows by how much an ensemble's members disagree"):
        select(cache, data, {"text": "text"}, 3, "uncertainty", model=HeadModel().fit(rated, "y", cache=cache))
    model.save(tmp_path / "m")
    data.to_csv(tmp_path / "d.csv", index=False)
    code, out, err = run_command(
        main,
        capsys,
        "select",
        "--cache",
        cache.path,
        "--data",
        tmp_path / "d.csv",
        "--budget",
        "4",
        "--strategy",
        "uncertainty",
        "--model",
        tmp_path / "m",
        "--skip-above",
        "0.999",
        "--out",
        tmp_path / "pick.csv",
        "--quiet",
    )
    assert code == 0, err
    assert sorted(pd.read_csv(tmp_path / "pick.csv").id) == sorted(picked.id)
