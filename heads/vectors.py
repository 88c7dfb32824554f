"""Where a model's vectors come from: a cache of its encoder's vectors, the encoder its ``config.json`` records,
or (fine-tuned) its own ``encoder/`` directory; every one checked by fingerprint before a vector is used."""

from __future__ import annotations

import json
from pathlib import Path

from embedcache import (
    CacheNotFoundError,
    EmbeddingCache,
    Encoder,
    ParameterError,
    load_encoder,
)
from embedcache.toolkit import RecordedEncoder, inside, resolve_device, spec_difference

from .data import as_table, joint_inputs, load_inputs
from .head_types import head_type
from .model_files import ModelError
from .neighbours import warn_unseen_conditions
from .sources import Joined


def open_source(cache, encoder):
    """A cache (opened, or built with ``encoder`` where the directory is new) or an encoder; several caches
    (a list) are read side by side (``Joined``)."""
    if isinstance(cache, (list, tuple)):
        if len(cache) == 1:
            return open_source(cache[0], encoder)
        return Joined([c if isinstance(c, EmbeddingCache) else EmbeddingCache(c) for c in cache])
    if isinstance(cache, EmbeddingCache):
        return cache
    if encoder is not None and not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder)
    if cache is None:
        return encoder if encoder is not None else load_encoder()
    try:
        return EmbeddingCache(cache, encoder)
    except CacheNotFoundError:
        return EmbeddingCache(cache, encoder or load_encoder())


MODEL_RECORDS = "the model was trained on vectors of"


def encoder_record(source) -> dict:
    """What a model keeps of the encoder of its vectors: fingerprint, name and how to load it again (of the
    first, for vectors of several side by side)."""
    if isinstance(source, Joined):
        return encoder_record(source.sources[0])
    recorded = source.recorded_encoder if isinstance(source, EmbeddingCache) else RecordedEncoder.of(source)
    return recorded.to_json()


def encoder_records(source) -> list[dict] | None:
    """The record of each encoder of vectors read side by side, in order; None for one encoder's."""
    return [encoder_record(s) for s in source.sources] if isinstance(source, Joined) else None


def joined_source(records: list[dict], caches, loaded: dict, device=None) -> Joined:
    """The sources of a model trained on several encoders' vectors (``records``), in that order: each cache
    given (checked against its record: a swapped or foreign one is refused by name), else the recorded encoder,
    loaded once (kept in ``loaded``, by position)."""
    caches = list(caches) if isinstance(caches, (list, tuple)) else ([] if caches is None else [caches])
    if len(caches) > len(records):
        raise ParameterError(f"the model reads {len(records)} caches side by side, {len(caches)} were given")
    sources = []
    for i, record in enumerate(records):
        cache = caches[i] if i < len(caches) else None
        if cache is not None and not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache(cache)
        if usable_cache(record, None, cache):
            sources.append(cache)
        else:
            if i not in loaded:
                loaded[i] = load_recorded_encoder(record, None, None, False, device)
            sources.append(loaded[i])
    return Joined(sources)


def recorded(record: dict) -> RecordedEncoder:
    """The encoder a model's ``config.json`` records, with the model's words for its errors."""
    return RecordedEncoder.from_json(record, MODEL_RECORDS, "the model")


def usable_cache(record: dict, finetuned: dict | None, cache: EmbeddingCache | None) -> bool:
    """Whether ``cache`` holds the vectors of the recorded encoder.  A frozen head's cache must: another
    encoder's is refused, naming what differs.  A fine-tuned model may be given a cache of the base encoder
    (it then encodes with its own)."""
    if cache is None:
        return False
    if finetuned is None and cache.fingerprint != record["fingerprint"]:
        differ = spec_difference(record.get("load"), cache.encoder_spec)
        raise recorded(record).mismatch(
            f"cache {cache.path} holds encoder {cache.encoder_name!r} (fingerprint {cache.fingerprint}); they "
            f"differ in: {differ}; use a cache built with the model's encoder",
        )
    return cache.fingerprint == record["fingerprint"]


def load_recorded_encoder(record: dict, finetuned: dict | None, directory: Path | None, joint: bool, device=None):
    """The encoder of a model's vectors: a fine-tuned model's own (its ``encoder/`` directory; a Backbone for
    a head that reads two texts as one sequence), else the encoder ``record`` names, checked against the
    recorded fingerprint."""
    if finetuned is None:
        return recorded(record).load(device, "pass the cache of those vectors (cache=..., --cache DIR)")
    path = finetuned_encoder_path(directory, finetuned)
    encoder = load_encoder(path)  # its fingerprint is checked before a vector of it is used
    if record["fingerprint"] not in encoder.fingerprints():
        raise recorded(record).mismatch(
            f"its encoder {path} now has fingerprint {encoder.fingerprint} (other weights or library "
            "versions): the directory was altered; fine-tune again",
        )
    if joint:
        from .finetuning.backbone import Backbone

        return Backbone.from_directory(path).to(resolve_device(device))
    return encoder


def finetuned_encoder_path(directory: Path | None, finetuned: dict) -> str:
    """The fine-tuned encoder's directory: a plain folder inside the model directory, nothing else."""
    if directory is None:
        raise ModelError("a fine-tuned model in memory has no encoder directory: save it, or give its encoder")
    where = directory / "config.json"
    name = finetuned.get("encoder") if isinstance(finetuned, dict) else None
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ModelError(
            f"{where}: field 'finetuned.encoder' must name a folder inside the model directory, "
            f"found {json.dumps(name)[:60]}; fine-tune again"
        )
    path = directory / name
    if path.is_symlink() or not path.is_dir() or not inside(path, directory):
        raise ModelError(
            f"{where}: field 'finetuned.encoder' names {path}, which is not a folder inside the "
            "model directory; fine-tune again"
        )
    return str(path)


def prediction_inputs(model, cache, data, columns=None, add_missing=False, conditions=None, progress: bool = True):
    """The inputs ``model`` scores for ``data``: its columns (``columns`` overrides them), its vectors from
    ``cache`` or its own encoder, warning of conditions never seen in training."""
    for side in ("pair", "condition"):
        given = (columns or {}).get(side)
        if given is not None and side not in model.sides_:
            raise ParameterError(
                f"the model reads {', '.join(model.sides_)} only, not a {side}: leave out the "
                f"{side} column ({given!r}, --{side}-col) or train a model that reads one"
            )
    columns = {**model.columns_, **{k: v for k, v in (columns or {}).items() if v is not None}}
    df, path = as_table(data, columns, model.sides_, conditions)
    if isinstance(cache, (list, tuple)) and not getattr(model, "encoders_", None):  # a model of one encoder
        if len(cache) != 1:
            raise ParameterError(f"the model reads the vectors of one encoder: give one cache, not {len(cache)}")
        cache = cache[0]
    source = model.vector_source(cache)
    if head_type(model.head_).joint:  # both texts in one sequence: nothing to cache per text
        return joint_inputs(source, df, columns, path, progress)
    inputs = load_inputs(source, df, columns, path, add_missing, progress, getattr(model, "layers_", None))
    warn_unseen_conditions(getattr(model, "conditions_", None), source, inputs)
    return inputs


def feature_layers(source, features: str) -> tuple[int, ...] | None:
    """The hidden states whose layer vectors a head trained on ``features`` reads from ``source``: None for
    ``final``; for ``layers``, those ``source`` (a cache built with them) holds."""
    if features == "final":
        return None
    if isinstance(source, Joined):
        raise ParameterError("features='layers' (--features layers) reads the layer vectors of one cache")
    layers = source.layers if isinstance(source, EmbeddingCache) else None
    if layers is None:
        where = f"cache {source.path} holds" if isinstance(source, EmbeddingCache) else "an encoder without a cache has"
        raise ParameterError(
            f"features='layers' (--features layers) reads layer vectors, and {where} none: build a cache with "
            "them (embedcache precompute ... --cache DIR --layers all) and train on it"
        )
    return layers
