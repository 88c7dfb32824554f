"""A soft prompt: N trained vectors read before every text (prompt tuning), as a sentence-transformers module.

Prompt tuning (Lester et al., 2021) trains only N vectors placed before the
word embeddings of every text; the transformer's weights stay as they were.
``SoftPromptTransformer`` is sentence-transformers' ``Transformer`` with that
prompt: its directory is an ordinary model directory plus
``soft_prompt.safetensors``, so ``SentenceTransformer(path)``,
``load_encoder(path)`` and every backend (the ONNX export traces it) read it.
``heads finetune --prompt-tuning N`` trains it through the same function, so
what is trained is what is served.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

try:
    from sentence_transformers.sentence_transformer.modules import Transformer
except ImportError:  # sentence-transformers before 6
    from sentence_transformers.models import Transformer  # type: ignore[no-redef]

SOFT_PROMPT_FILE = "soft_prompt.safetensors"


def with_soft_prompt(model, soft_prompt: torch.Tensor, features: dict) -> torch.Tensor:
    """Token vectors of ``features`` (``input_ids``, ``attention_mask``, maybe ``token_type_ids``) when the
    transformer ``model`` reads ``soft_prompt`` (n, hidden) first; the prompt's own outputs are dropped, so
    pooling sees one vector per token of the text, as without a prompt."""
    ids, mask = features["input_ids"], features["attention_mask"]
    batch, n = ids.shape[0], soft_prompt.shape[0]
    embeds = model.get_input_embeddings()(ids)
    inputs = {
        "inputs_embeds": torch.cat([soft_prompt.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1),
        "attention_mask": torch.cat([mask.new_ones(batch, n), mask], dim=1),
    }
    if features.get("token_type_ids") is not None:
        types = features["token_type_ids"]
        inputs["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], dim=1)
    return model(**inputs).last_hidden_state[:, n:]


class SoftPromptTransformer(Transformer):
    """sentence-transformers' ``Transformer`` reading a trained soft prompt before every text."""

    soft_prompt: nn.Parameter

    def forward(self, features: dict, **kwargs) -> dict:
        features["token_embeddings"] = with_soft_prompt(self.model, self.soft_prompt, features)
        return features

    def __repr__(self) -> str:  # in an encoder's description, so its fingerprint names the prompt
        return f"SoftPromptTransformer({len(self.soft_prompt)} tokens, {super().__repr__()})"

    def save(self, output_path: str, *args, **kwargs) -> None:
        super().save(output_path, *args, **kwargs)
        save_soft_prompt(self.soft_prompt, output_path)

    @classmethod
    def load(  # type: ignore[override]  # sentence-transformers' own keywords pass through **kwargs
        cls, model_name_or_path: str, subfolder: str = "", **kwargs
    ) -> SoftPromptTransformer:
        module = super().load(model_name_or_path, subfolder=subfolder, **kwargs)
        prompt = read_soft_prompt(Path(model_name_or_path) / subfolder)
        if prompt is None:
            raise FileNotFoundError(
                f"{Path(model_name_or_path) / subfolder / SOFT_PROMPT_FILE}: the soft prompt is missing"
            )
        module.soft_prompt = nn.Parameter(prompt, requires_grad=False)
        return module


def save_soft_prompt(prompt: torch.Tensor, directory) -> None:
    save_file({"soft_prompt": prompt.detach().to("cpu").contiguous()}, str(Path(directory) / SOFT_PROMPT_FILE))


def read_soft_prompt(directory) -> torch.Tensor | None:
    """The soft prompt saved in ``directory``, or None where there is none."""
    path = Path(directory) / SOFT_PROMPT_FILE
    return load_file(str(path))["soft_prompt"] if path.exists() else None
