"""What tests share besides fixtures: a hash encoder, a tiny random BERT, the command runners, tmpfs mounts."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedcache import Encoder

ROOT = Path(__file__).resolve().parents[1]  # the repository
TEST_DATA = ROOT / "tests" / "data"


class HashEncoder(Encoder):
    """A distinct, deterministic vector per text: shows which text a vector belongs to."""

    def __init__(self, dim=8, salt="", batch_size=16):
        super().__init__()
        self.name, self.dim, self.salt, self.batch_size = "hash" + salt, dim, salt, batch_size
        self.calls = []  # the texts of each encode call

    def describe(self):
        return {"backend": "hash", "dim": self.dim, "salt": self.salt}

    def _encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts])

    def vector(self, text):
        seed = int.from_bytes(hashlib.blake2b((self.salt + text).encode("utf-8"), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)


def mount_tmpfs(where, options: str) -> None:
    """Mount a tmpfs at ``where`` (``options`` like 'size=8k' or 'size=1m,ro'); skip the test where this machine
    does not allow it (not root, no capability, no mount command)."""
    import shutil
    import subprocess

    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=False, capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")


def run(main, capsys, *args):
    """Run a command's ``main`` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    """The command failed with exactly one line naming what went wrong, and no traceback."""
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


def make_tiny_bert(path, seed=0):
    """A randomly initialised 2-layer BERT with a character vocabulary, saved as a model directory."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # a vocabulary dict (transformers 5 ignores vocab_file here and would map every word to [UNK])
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return path


def run_json(main, capsys, *args):
    """Run a command in this process: (exit status, its last stdout line as JSON or None, stderr)."""
    code, out, err = run(main, capsys, *args)
    lines = out.strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        summary = None
    return code, summary, err


def transformers_layer_means(encoder, texts):
    """``(n, n_layers, dim)``: every hidden state of ``encoder``'s model as transformers itself gives it
    (``output_hidden_states``), mean-pooled over each text's tokens; the reference for layer vectors."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from embedcache import model_directory

    directory = model_directory(encoder.spec["name_or_path"])
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()
    default = encoder.model.default_prompt_name  # as sentence-transformers' encode: the model's default prompt
    prompt = encoder.spec.get("prompt") or (encoder.model.prompts.get(default) if default else "") or ""
    batch = tokenizer(
        [prompt + t for t in texts], padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt"
    )
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"][..., None].float()
    return torch.stack([(h * mask).sum(1) / mask.sum(1) for h in states], 1).numpy()


def min_cosine(a, b) -> float:
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


# -- a topic task: texts about food score 1, about sport 0 (the heads tests' data) --------------------------

FOOD = ["pizza", "pasta", "soup", "salad", "bread", "cake", "sushi", "tacos", "curry", "pancakes"]
SPORT = ["football", "tennis", "basketball", "swimming", "cycling", "golf", "rugby", "hockey", "baseball", "skiing"]
TEMPLATES = [
    "I really enjoy {}.",
    "Tell me more about {}.",
    "{} is my favourite thing.",
    "We talked about {} all evening.",
    "Is {} popular in your country?",
    "My friend cannot stop thinking about {}.",
    "Yesterday was all about {}.",
    "What do you know about {}?",
]


def topic_rows(words_food, words_sport):
    rows = [(t.format(w), 1.0) for w in words_food for t in TEMPLATES]
    rows += [(t.format(w), 0.0) for w in words_sport for t in TEMPLATES]
    return pd.DataFrame(rows, columns=["text", "food"])


TRAIN, TEST = topic_rows(FOOD[:7], SPORT[:7]), topic_rows(FOOD[7:], SPORT[7:])  # test words never seen in training


def similarity_pairs(words) -> pd.DataFrame:
    """Pairs ``a``, ``b`` with a similarity ``sim``: 5 (the same topic, said warmly), 2.5, 0 (unrelated)."""
    rows = []
    for i, w in enumerate(words):
        rows.append((f"I really enjoy {w}.", f"{w} is something I love.", 5.0))
        rows.append((f"I really enjoy {w}.", f"Tell me more about {w}.", 2.5))
        rows.append((f"I really enjoy {w}.", f"The train to {['Paris', 'Rome', 'Oslo'][i % 3]} was late.", 0.0))
    return pd.DataFrame(rows, columns=["a", "b", "sim"])
