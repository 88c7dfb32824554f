import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from heads import EmbeddingRegressor

# The generic checks use 1 to 5 features; a pair (n_inputs=2, needed by two-tower) splits
# its features in half, so it is checked on even-width data below instead.
# Integer weights are not repeated rows here: the validation rows (early stopping, ridge's alpha)
# are drawn from the rows, so a weight-2 row and its two copies land in different splits.
WEIGHTS_ARE_NOT_REPEATS = {"check_sample_weight_equivalence_on_dense_data": "validation rows are drawn per row"}


@parametrize_with_checks(
    [EmbeddingRegressor(epochs=20), EmbeddingRegressor(head="ridge")],
    expected_failed_checks=lambda estimator: WEIGHTS_ARE_NOT_REPEATS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_works_in_pipeline_grid_search_and_cross_val_score():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    y = X[:, :4].sum(1) + 0.1 * rng.standard_normal(300)
    pipe = make_pipeline(StandardScaler(), EmbeddingRegressor(epochs=30, width=32))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.8
    search = GridSearchCV(EmbeddingRegressor(epochs=20, width=32), {"lr": [1e-3, 3e-3]}, cv=2).fit(X, y)
    assert search.best_score_ > 0.7 and search.best_params_["lr"] in (1e-3, 3e-3)


def test_pairs_and_two_tower_learn_a_similarity():
    rng = np.random.default_rng(1)
    u = rng.standard_normal((400, 8)).astype(np.float32)
    v = u + rng.standard_normal((400, 8)).astype(np.float32) * rng.uniform(0.1, 2, (400, 1)).astype(np.float32)
    y = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    X = np.hstack([u, v])
    # the target is the cosine itself: two-tower gets it almost exactly, concat approximates it
    for head, r2 in (("two-tower", 0.95), ("concat", 0.6)):
        assert cross_val_score(EmbeddingRegressor(head=head, n_inputs=2, epochs=40, width=32), X, y, cv=2).mean() > r2
    with pytest.raises(ValueError, match="divide the 3 features"):
        EmbeddingRegressor(n_inputs=2).fit(X[:, :3], y)


def test_label_range_conditions_and_a_3d_layout():
    from heads import EmbeddingRegressor

    rng = np.random.default_rng(2)
    text = rng.standard_normal((300, 8)).astype(np.float32)
    cond = np.repeat(np.eye(8, dtype=np.float32)[:2], 150, axis=0)  # two conditions, one-hot as their "vectors"
    y = np.clip(0.5 + 0.2 * text[:, 0] + 0.3 * cond[:, 0], 0, 1)
    flat = np.hstack([text, cond])
    model = EmbeddingRegressor(head="ridge", n_inputs=2, condition=True, label_range=(0, 1)).fit(flat, y)
    assert model.model_.sides_ == ("text", "condition")
    predicted = model.predict(np.stack([text, cond], axis=1))  # (n, n_inputs, dim): the same rows
    np.testing.assert_allclose(predicted, model.predict(flat))
    assert predicted.min() >= 0 and predicted.max() <= 1 and np.corrcoef(predicted, y)[0, 1] > 0.9
    with pytest.raises(ValueError, match=r"\(n, n_inputs=2, dim\)"):
        model.predict(np.stack([text, cond, cond], axis=1))


def test_texts_go_through_the_cache_in_a_pipeline(tmp_path):
    from helpers import HashEncoder

    from embedcache import EmbeddingCache
    from heads import EmbeddingRegressor, EmbeddingTransformer

    texts = [f"text {i}" for i in range(60)]
    encoder = HashEncoder()
    cache = EmbeddingCache(tmp_path / "c", encoder)
    cache.add(texts)
    y = np.array([encoder.vector(t)[0] for t in texts])  # a function of each text's vector
    pipe = make_pipeline(EmbeddingTransformer(str(tmp_path / "c")), EmbeddingRegressor(head="ridge"))
    pipe.fit(texts, y)
    assert np.corrcoef(pipe.predict(texts), y)[0, 1] > 0.95
    pairs = list(zip(texts, reversed(texts)))
    assert EmbeddingTransformer(cache).fit(pairs).transform(pairs).shape == (60, 16)  # [text | pair]
