import json

import numpy as np
import pytest
from filelock import FileLock
from helpers import HashEncoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedcache import CacheLockedError, EmbeddingCache, FingerprintMismatchError
from embedcache.index import KeyIndex
from embedcache.toolkit import text_keys


def test_encode_returns_vectors_in_input_order_and_encodes_each_text_once(tmp_path, hash_encoder):
    cache = EmbeddingCache(tmp_path / "c", hash_encoder)
    texts = ["b", "a", "b", "c", "a"]
    vectors = cache.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 8)
    expected = np.stack([hash_encoder.vector(t) for t in texts])
    np.testing.assert_allclose(vectors, expected, atol=2e-3, rtol=2e-3)  # float16 storage
    assert sorted(t for call in hash_encoder.calls for t in call) == ["a", "b", "c"]
    assert len(cache) == 3 and cache.dim == 8 and cache.fingerprint == hash_encoder.fingerprint


def test_second_encode_computes_only_new_texts(tmp_path, hash_encoder):
    cache = EmbeddingCache(tmp_path / "c", hash_encoder)
    counts = ("rows", "unique", "cached", "encoded", "truncated", "mostly_unknown")
    first = cache.add(["x", "y"])
    assert {k: first[k] for k in counts} == {
        "rows": 2,
        "unique": 2,
        "cached": 0,
        "encoded": 2,
        "truncated": 0,
        "mostly_unknown": 0,
    }
    hash_encoder.calls.clear()
    stats = cache.add(["y", "z", "x", "z"])
    assert {k: stats[k] for k in counts} == {
        "rows": 4,
        "unique": 3,
        "cached": 2,
        "encoded": 1,
        "truncated": 0,
        "mostly_unknown": 0,
    }
    assert hash_encoder.calls == [["z"]]


def test_get_is_read_only_and_says_how_many_are_missing(tmp_path, hash_encoder):
    cache = EmbeddingCache(tmp_path / "c", hash_encoder)
    cache.add(["a", "b"])
    with pytest.raises(KeyError, match="2 of 3 distinct texts"):
        cache.get(["a", "new1", "new2", "new1"])
    assert len(cache) == 2
    np.testing.assert_array_equal(cache.contains(["a", "zz", "b"]), [True, False, True])


def test_a_reopened_cache_reads_without_an_encoder(tmp_path, hash_encoder):
    EmbeddingCache(tmp_path / "c", hash_encoder, dtype="float32").add(["one", "two"])
    cache = EmbeddingCache(tmp_path / "c")
    np.testing.assert_array_equal(
        cache.get(["two", "one"]), np.stack([hash_encoder.vector("two"), hash_encoder.vector("one")])
    )
    with pytest.raises(KeyError, match="without an encoder"):
        cache.add(["three"])
    with pytest.raises(FileNotFoundError, match="no embedding cache"):
        EmbeddingCache(tmp_path / "absent")


def test_another_encoder_is_refused_naming_both(tmp_path):
    EmbeddingCache(tmp_path / "c", HashEncoder(salt="A")).add(["a"])
    other = HashEncoder(salt="B")
    with pytest.raises(FingerprintMismatchError) as err:
        EmbeddingCache(tmp_path / "c", other)
    assert "hashA" in str(err.value) and "hashB" in str(err.value)
    assert HashEncoder(salt="A").fingerprint in str(err.value) and other.fingerprint in str(err.value)


def test_storage_dtype_belongs_to_the_cache(tmp_path, hash_encoder):
    EmbeddingCache(tmp_path / "c", hash_encoder, dtype="float32")
    with pytest.raises(ValueError, match="stores float32"):
        EmbeddingCache(tmp_path / "c", hash_encoder, dtype="float16")


def test_shards_split_at_shard_size_and_iterate_one_at_a_time(tmp_path, hash_encoder):
    cache = EmbeddingCache(tmp_path / "c", hash_encoder, shard_size=100)
    texts = [f"t{i}" for i in range(250)]
    cache.add(texts)
    shards = list(cache.iter_shards())
    assert [len(k) for k, _ in shards] == [100, 100, 50]
    keys = np.concatenate([k for k, _ in shards])
    assert {bytes(k) for k in keys} == {bytes(k) for k in text_keys(texts)}
    assert cache.info()["shards"] == 3


def test_a_second_writer_gets_a_clear_error(tmp_path, hash_encoder):
    cache = EmbeddingCache(tmp_path / "c", hash_encoder, lock_timeout=0.2)
    with FileLock(tmp_path / "c" / ".lock"):  # another writer holds the lock
        with pytest.raises(CacheLockedError, match="being written by another process.*gave up after 0.2 s"):
            cache.add(["a"])
        assert cache.contains(["a"]).tolist() == [False]
    cache.add(["a"])
    assert len(cache) == 1


def test_a_dead_writers_temporary_files_go_its_whole_shard_is_adopted_and_other_files_stay(tmp_path, hash_encoder):
    cache = EmbeddingCache(tmp_path / "c", hash_encoder)
    cache.add(["a"])
    cache.add(["z"])  # shard-000002: then a writer "dies" before listing it
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "c" / ".tmp-shard-000009.h5-123").write_bytes(b"half a shard")
    (tmp_path / "c" / "shard-000009.h5").write_bytes(b"not ours to delete")
    reopened = EmbeddingCache(tmp_path / "c", hash_encoder)
    assert len(reopened) == 1 and reopened.contains(["z"]).tolist() == [False]  # readers ignore unlisted shards
    reopened.add(["b"])
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == [
        ".lock",
        "manifest.json",
        "shard-000001.h5",
        "shard-000002.h5",
        "shard-000009.h5",
        "shard-000010.h5",
    ]
    assert reopened.contains(["a", "z", "b"]).all() and len(reopened) == 3
    assert reopened.verify() == []


def test_work_finished_before_an_interrupt_is_kept(tmp_path):
    class Interrupted(HashEncoder):
        def _encode(self, texts):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super()._encode(texts)

    encoder = Interrupted(batch_size=1)  # 8 texts per encode call
    cache = EmbeddingCache(tmp_path / "c", encoder, shard_size=1000)
    with pytest.raises(KeyboardInterrupt):
        cache.add([f"t{i}" for i in range(40)])
    assert len(EmbeddingCache(tmp_path / "c")) == 16


def test_a_writer_sees_shards_written_by_another_handle(tmp_path, hash_encoder):
    a = EmbeddingCache(tmp_path / "c", hash_encoder)
    b = EmbeddingCache(tmp_path / "c", hash_encoder)
    a.add(["x"])
    assert b.add(["x", "y"])["cached"] == 1
    assert len(a) == 2 and a.get(["y"]).shape == (1, 8)


def test_index_lookup_tells_apart_keys_sharing_their_first_64_bits():
    keys = np.zeros((4, 16), dtype=np.uint8)
    keys[:, 8] = [3, 1, 2, 9]  # same first half, different second half
    index = KeyIndex()
    index.add(keys[:3], first_row=10)
    np.testing.assert_array_equal(index.lookup(keys), [10, 11, 12, -1])
    assert index.nbytes == 3 * 20


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(min_size=1), min_size=1, max_size=30))
def test_any_unicode_text_round_trips_to_its_own_vector(tmp_path_factory, texts):
    encoder = HashEncoder()
    cache = EmbeddingCache(tmp_path_factory.mktemp("prop"), encoder, dtype="float32", shard_size=7)
    first = cache.encode(texts[: len(texts) // 2])
    vectors = cache.encode(texts)
    np.testing.assert_array_equal(vectors, np.stack([encoder.vector(t) for t in texts]).reshape(len(texts), -1))
    np.testing.assert_array_equal(first, vectors[: len(texts) // 2])
    assert len(cache) == len(set(texts))


def test_a_text_that_is_not_a_string_is_one_clear_error_and_nothing_is_written(tmp_path):
    from embedcache import InputError

    cache = EmbeddingCache(tmp_path / "c", HashEncoder())
    with pytest.raises(InputError, match=r"text 1 .* is float nan, not a string: drop or fill empty values"):
        cache.add(["a text", float("nan"), "another"])  # an empty CSV cell read by pandas
    assert len(cache) == 0 and not list((tmp_path / "c").glob("shard-*"))
