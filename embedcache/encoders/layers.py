"""Layer vectors: the attention-masked mean of chosen hidden states of a transformer, from the same forward pass
as the sentence vector (layer 0 is the embeddings' output, layer N the last).

Probing studies and ELMo found what a head needs spread over the layers, not only in
the last one; ridge on every layer's mean beats ridge on the final sentence vector
by several Pearson points on rating tasks.  ``resolve_layers`` turns what a user
writes (``all``, ``last:4``, ``0,3,6``) into the sorted indices a cache records.
"""

from __future__ import annotations

import re

from ..errors import ParameterError

LAYER_CHOICES = "'all', 'last:K' or indices like '0,3,6'"


def resolve_layers(spec, count: int) -> tuple[int, ...]:
    """The sorted layer indices ``spec`` names among ``count`` hidden states (embeddings output and each layer):
    ``"all"``, ``"last:K"``, ``"i,j,k"`` or a sequence of ints; negative indices count from the end."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(count))
        last = re.fullmatch(r"last:(\d+)", text)
        if last:
            k = int(last.group(1))
            if not 1 <= k <= count:
                raise ParameterError(f"layers 'last:{k}': the encoder has {count} hidden states, give 1 to {count}")
            return tuple(range(count - k, count))
        try:
            spec = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise ParameterError(f"layers must be {LAYER_CHOICES}, got {spec!r}") from None
    try:
        wanted = [int(i) for i in spec]
    except (TypeError, ValueError):
        raise ParameterError(f"layers must be {LAYER_CHOICES}, got {spec!r}") from None
    if not wanted:
        raise ParameterError(f"layers must name at least one layer: {LAYER_CHOICES}")
    out = set()
    for i in wanted:
        if not -count <= i < count:
            raise ParameterError(
                f"layer {i} does not exist: the encoder has {count} hidden states (0, the embeddings, to {count - 1})"
            )
        out.add(i % count)
    return tuple(sorted(out))


def describe_layers(layers) -> str:
    """``0-6`` for a run, else the indices; ``none`` for a cache of sentence vectors only."""
    if not layers:
        return "none"
    if list(layers) == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def masked_means(hidden_states, attention_mask, layers: tuple[int, ...]):
    """``(batch, len(layers), dim)`` float32 torch tensor: the mean over each text's real tokens of each chosen
    hidden state (``hidden_states``: one ``(batch, tokens, dim)`` tensor per layer)."""
    import torch

    mask = attention_mask.to(hidden_states[0].dtype).unsqueeze(-1)  # (batch, tokens, 1)
    count = mask.sum(dim=1).clamp(min=1.0)
    return torch.stack([(hidden_states[i] * mask).sum(dim=1) / count for i in layers], dim=1).float()
