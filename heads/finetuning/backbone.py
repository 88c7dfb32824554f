"""A sentence encoder to train: a transformers model with the pooling it was trained with, saved as a sentence-transformers directory.

Read from a sentence-transformers directory (``modules.json`` names the
pooling and whether vectors are normalised) or a plain transformers one (mean
pooling, as sentence-transformers does for those).  ``save`` writes a
directory that ``SentenceTransformer(path)`` and ``embedcache.load_encoder``
load, giving the same vectors as ``forward`` here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedcache import InputError, ParameterError, model_directory
from embedcache.toolkit import check_model_directory, read_soft_prompt, save_soft_prompt, with_soft_prompt

POOLING = ("mean", "cls", "max")


def _default_prompt(path: Path) -> str | None:
    """The prompt sentence-transformers prepends by default (e5's "query: "), from the directory's config."""
    config = path / "config_sentence_transformers.json"
    if not config.exists():
        return None
    config = json.loads(config.read_text())
    return (config.get("prompts") or {}).get(config.get("default_prompt_name") or "")


def _read_pooling(path: Path) -> tuple[str, bool, int | None]:
    """(pooling mode, normalise, max sequence length) from a sentence-transformers directory."""
    modules = path / "modules.json"
    if not modules.exists():
        return "mean", False, None
    pooling, normalize = "mean", False
    for module in json.loads(modules.read_text()):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            config = json.loads((path / module["path"] / "config.json").read_text())
            if "pooling_mode" in config:  # written by sentence-transformers 6: {"pooling_mode": "mean", ...}
                modes = [config["pooling_mode"]] if config["pooling_mode"] in POOLING else []
            else:
                modes = [
                    m
                    for m in POOLING
                    if config.get(f"pooling_mode_{m}_token" if m == "cls" else f"pooling_mode_{m}_tokens")
                ]
            if (
                len(modes) != 1
                or config.get("pooling_mode_mean_sqrt_len_tokens")
                or config.get("include_prompt") is False
            ):
                raise InputError(
                    f"{path}: pooling {config} is not supported for fine-tuning; supported: one of {POOLING}"
                )
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
    st_config = path / "sentence_bert_config.json"
    max_length = json.loads(st_config.read_text()).get("max_seq_length") if st_config.exists() else None
    return pooling, normalize, max_length


class Backbone(nn.Module):
    """transformers model + pooling (+ L2 normalisation): ``forward(features) -> (n, dim)``."""

    def __init__(self, model, tokenizer, pooling="mean", normalize=False, max_length=None, prompt=None):
        super().__init__()
        if pooling not in POOLING:
            raise ParameterError(f"unknown pooling {pooling!r}; choose one of {POOLING}")
        self.model, self.tokenizer = model, tokenizer
        self.pooling, self.normalize, self.prompt = pooling, normalize, prompt
        self.soft_prompt: nn.Parameter | None = None  # prompt tuning: vectors read before every text
        self.max_length = max_length or min(tokenizer.model_max_length, 512)
        self.dim = model.config.hidden_size

    def add_soft_prompt(self, tokens: int, seed: int = 0) -> None:
        """Prompt tuning: ``tokens`` trainable vectors read before every text (initialised, as peft does by
        default, from the embeddings of random vocabulary entries); the transformer is frozen."""
        self.model.requires_grad_(False)
        table = self.model.get_input_embeddings().weight
        rows = torch.randint(0, table.shape[0], (tokens,), generator=torch.Generator().manual_seed(seed))
        self.soft_prompt = nn.Parameter(table[rows].detach().clone())

    @classmethod
    def from_directory(cls, name_or_path: str | None = None, max_length=None) -> Backbone:
        from transformers import AutoModel, AutoTokenizer

        path = model_directory(name_or_path)
        check_model_directory(path)  # before transformers reads a file of it: it may name code to import
        pooling, normalize, st_max = _read_pooling(Path(path)) if Path(path).is_dir() else ("mean", False, None)
        model = AutoModel.from_pretrained(path, trust_remote_code=False)
        local = Path(path).is_dir()
        backbone = cls(
            model,
            AutoTokenizer.from_pretrained(path, trust_remote_code=False),
            pooling,
            normalize,
            max_length or st_max,
            _default_prompt(Path(path)) if local else None,
        )
        soft = read_soft_prompt(path) if local else None
        if soft is not None:  # an encoder trained by prompt tuning
            backbone.soft_prompt = nn.Parameter(soft)
        return backbone

    def tokenize(self, texts: list[str], pairs: list[str] | None = None) -> dict:
        """Padded to the longest text of the call (dynamic padding), truncated at ``max_length``; the first
        text of each sequence carries the model's default prompt, as sentence-transformers encodes it."""
        if self.prompt:
            texts = [self.prompt + t for t in texts]
        return dict(
            self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )

    def forward(self, features: dict) -> torch.Tensor:
        if self.soft_prompt is not None:
            tokens = with_soft_prompt(self.model, self.soft_prompt, features)
        else:
            tokens = self.model(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        if self.pooling == "cls":
            out = tokens[:, 0]
        elif self.pooling == "max":
            out = tokens.masked_fill(mask == 0, torch.finfo(tokens.dtype).min).max(1).values
        else:
            out = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(out, dim=-1) if self.normalize else out

    @torch.no_grad()
    def encode(
        self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64, progress=False
    ) -> np.ndarray:
        """(n, dim) float32 vectors; with ``pairs``, each (text, pair) is one sequence (the cross encoder)."""
        from tqdm.auto import tqdm

        self.eval()
        device = next(self.parameters()).device
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for k in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="encoding", unit="batch"):
            rows = order[k : k + batch_size]
            features = self.tokenize([texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows])
            out[rows] = self({n: t.to(device) for n, t in features.items()}).float().cpu().numpy()
        return out

    def save(self, directory) -> Path:
        """A sentence-transformers directory: the model and tokenizer, modules.json, the pooling config."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        first = "sentence_transformers.models.Transformer"
        if self.soft_prompt is not None:
            from embedcache import SoftPromptTransformer

            first = f"{SoftPromptTransformer.__module__}.{SoftPromptTransformer.__name__}"
            save_soft_prompt(self.soft_prompt, directory)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": first},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
            (directory / "2_Normalize").mkdir(exist_ok=True)
        (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
        (directory / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": self.dim,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": self.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
        (directory / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_length, "do_lower_case": False}, indent=2) + "\n"
        )
        if self.prompt:
            (directory / "config_sentence_transformers.json").write_text(
                json.dumps({"prompts": {"default": self.prompt}, "default_prompt_name": "default"}, indent=2) + "\n"
            )
        return directory
