"""Settings as objects: ``TrainConfig`` (how a head is trained) and ``FinetuneConfig`` (what fine-tuning adds).

Each field carries its check and its help in its metadata, so the Python API
(``config.check()``), the commands (``add_arguments``: one flag per field) and
a saved model's ``config.json`` (``params``) agree on names, bounds and words.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields, replace

from embedcache import ParameterError
from embedcache.toolkit import PRECISIONS, check_choice, check_float, check_int, check_label_range, flag_type

LOSSES = ("mse", "huber", "l1")
FEATURES = ("final", "layers")


def setting(default, help: str, check=None, convert=int, **bounds):
    """A config field: its default, the help of its flag, and the check both the API and the flag apply."""
    return field(default=default, metadata={"help": help, "check": check, "convert": convert, "bounds": bounds})


def bounds(f, zero_lr: bool = False) -> dict:
    """The bounds a field's check takes; ``zero_lr`` lets lr be 0 (fine-tuning may freeze the head and train
    the encoder only)."""
    out = dict(f.metadata["bounds"])
    if f.name == "lr" and zero_lr:
        out["low_open"] = False
    return out


def check_fields(config, zero_lr: bool = False):
    """Each field of ``config`` through its own check (ParameterError naming the field); returns ``config``."""
    for f in fields(config):
        check, value = f.metadata["check"], getattr(config, f.name)
        if check is not None and value is not None:
            check(value, f.name, **bounds(f, zero_lr))
    return config


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass
class TrainConfig:
    """How a head is trained: by ``HeadModel``, ``EmbeddingRegressor``, ``heads train``, self-training and fine-tuning."""

    head: str = setting(
        "auto",
        "head type: auto (two-tower for a pair of texts, as it starts from their calibrated "
        "cosine; concat otherwise), search (every head type on every feature set the cache holds, "
        "ranked by validation Pearson; the best is saved with the leaderboard) or a registered type "
        "(default: %(default)s)",
    )
    features: str = setting(
        "final",
        "what the head reads: final (each text's sentence vector) or layers (its layer vectors, from a cache "
        "built with embedcache precompute --layers; the neural heads learn a softmax-weighted mix of the layers, "
        "ridge reads them standardised side by side) (default: %(default)s)",
        check_choice,
        str,
        choices=FEATURES,
    )
    width: int = setting(256, "projection width (default %(default)s)", check_int)
    dropout: float = setting(0.1, "dropout (default %(default)s)", check_float, float, low=0, high=1, high_open=True)
    shared: bool = setting(True, "(--no-shared) separate projections for the two texts of a pair", _check_bool)
    loss: str = setting("mse", "training loss", check_choice, str, choices=LOSSES)
    epochs: int = setting(30, "at most this many epochs (default %(default)s)", check_int)
    lr: float = setting(
        1e-3, "the head's learning rate (default %(default)s)", check_float, float, low=0, low_open=True
    )
    weight_decay: float = setting(0.01, "AdamW weight decay (default %(default)s)", check_float, float, low=0)
    batch_size: int | None = setting(None, "rows per step (default: about 100 steps an epoch, 32 to 1024)", check_int)
    patience: int = setting(
        5, "stop after this many epochs without a better validation RMSE (default %(default)s)", check_int, minimum=0
    )
    val_fraction: float = setting(
        0.1,
        "held-out share of distinct texts when no validation file is given (default %(default)s)",
        check_float,
        float,
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    label_range: tuple | None = setting(None, "bound predictions to [LO, HI]", check_label_range)
    ensemble: int = setting(
        1,
        "train K heads, each validated on its own fold of the training rows, and predict their mean; their "
        "spread per row (predict --std) makes the intervals narrow where they agree (default %(default)s: one head)",
        check_int,
    )
    seed: int = setting(
        0, "random seed: the same seed gives the same model (default %(default)s)", check_int, minimum=0
    )

    def check(self, zero_lr: bool = False) -> TrainConfig:
        """Every field within its allowed values (ParameterError naming it); ``zero_lr`` allows lr = 0."""
        from .head_types import check_head_name

        check_head_name(self.head, allow_auto=True)
        return check_fields(self, zero_lr)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["label_range"] = None if self.label_range is None else list(self.label_range)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        if values.get("label_range") is not None:
            values["label_range"] = tuple(values["label_range"])
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)


@dataclass
class FinetuneConfig:
    """What fine-tuning the encoder adds to a ``TrainConfig``."""

    model: str | None = setting(
        None,
        "encoder to fine-tune: a sentence-transformers or transformers directory or hub "
        "id (default: the embedded all-MiniLM-L6-v2)",
    )
    encoder_lr: float | None = setting(
        None,
        "the encoder's learning rate; 0 freezes it (default: 2e-5; 1e-4 for the cross head, whose joint "
        "reading of two texts is new to a bi-encoder)",
        check_float,
        float,
        low=0,
    )
    lora: int | None = setting(None, "train rank-R LoRA adapters (peft) instead of every encoder weight", check_int)
    prompt_tuning: int | None = setting(
        None,
        "prompt tuning: train N vectors read before every text (at --lr), the "
        "encoder frozen; saved as a small soft_prompt.safetensors beside it",
        check_int,
    )
    grad_accum: int = setting(1, "gradient accumulation steps (default %(default)s)", check_int)
    gradient_checkpointing: bool = setting(False, "recompute activations: less memory, slower", _check_bool)
    max_length: int | None = setting(None, "tokens per text (default: the encoder's)", check_int)
    precision: str = setting(
        "auto", "auto: bf16 (or fp16) mixed precision on a GPU, fp32 on the CPU", check_choice, str, choices=PRECISIONS
    )
    init_head: str | None = setting(
        None,
        "start from a head trained by heads train on this encoder's frozen vectors (linear probing, then fine-tuning)",
    )

    def check(self) -> FinetuneConfig:
        if self.lora and self.prompt_tuning:
            raise ParameterError(
                f"choose LoRA (lora={self.lora}, --lora) or prompt tuning (prompt_tuning="
                f"{self.prompt_tuning}, --prompt-tuning), not both"
            )
        return check_fields(self)

    def to_dict(self) -> dict:
        return {k: (None if v is None else str(v) if k == "init_head" else v) for k, v in asdict(self).items()}


# -- flags ------------------------------------------------------------------------

METAVARS = {
    "dropout": "P",
    "lr": "LR",
    "encoder_lr": "LR",
    "weight_decay": "W",
    "val_fraction": "F",
    "batch_size": "N",
    "epochs": "N",
    "width": "N",
    "patience": "N",
    "seed": "N",
    "lora": "R",
    "prompt_tuning": "N",
    "max_length": "N",
    "grad_accum": "N",
    "model": "NAME_OR_PATH",
    "init_head": "MODEL_DIR",
    "head": "HEAD",
}


def add_arguments(parser, config, title: str, zero_lr: bool = False, helps: dict | None = None) -> None:
    """One flag per field of ``config`` (an instance: its values are the defaults), in an argument group;
    ``zero_lr`` lets ``--lr`` be 0, as ``TrainConfig.check(zero_lr=True)`` does; ``helps`` replaces the help of
    fields by name (where a command's default tells another story than the field's)."""
    group = parser.add_argument_group(title)
    for f in fields(config):
        meta, default, flag = f.metadata, getattr(config, f.name), "--" + f.name.replace("_", "-")
        if helps and f.name in helps:
            meta = {**meta, "help": helps[f.name]}
        if f.name == "shared":
            group.add_argument("--no-shared", dest="shared", action="store_false", default=default, help=meta["help"])
        elif isinstance(default, bool):
            group.add_argument(flag, action="store_true", default=default, help=meta["help"])
        elif f.name == "label_range":
            group.add_argument(flag, type=float, nargs=2, metavar=("LO", "HI"), default=default, help=meta["help"])
        elif "choices" in meta["bounds"]:
            group.add_argument(flag, default=default, choices=meta["bounds"]["choices"], help=meta["help"])
        elif meta["check"] is None:
            group.add_argument(flag, default=default, metavar=METAVARS.get(f.name), help=meta["help"])
        else:
            group.add_argument(
                flag,
                type=flag_type(meta["check"], meta["convert"], **bounds(f, zero_lr)),
                default=default,
                metavar=METAVARS.get(f.name),
                help=meta["help"],
            )


def from_arguments(cls, args: argparse.Namespace, **changes):
    """The config of class ``cls`` from parsed flags (fields without a flag keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    if values.get("label_range") is not None:
        values["label_range"] = tuple(values["label_range"])
    return cls(**{**values, **changes})


# What heads finetune trains with unless told otherwise (a head and its encoder learn together: fewer epochs).
FINETUNE_DEFAULTS = TrainConfig(head="concat", epochs=3, patience=2)  # batch size: see finetune_defaults
ENCODER_LR = {"cross": 1e-4, None: 2e-5}  # by head; a cross head at 2e-5 barely learns in an epoch
BATCH_SIZE = {"cross": 16, None: 32}  # by head: more steps for the cross head


def finetune_defaults(config: TrainConfig, encoder: FinetuneConfig) -> tuple[TrainConfig, FinetuneConfig]:
    """Fill what fine-tuning leaves to the head (``config.head`` resolved): the batch size and the encoder's
    learning rate.  STS-B, 1,000 pairs, one epoch, cross head: 21.6 Spearman at 2e-5 and batch 32, 65.9 at
    1e-4 and 16 (benchmarks/README.md)."""
    if config.batch_size is None:
        config = config.replace(batch_size=BATCH_SIZE.get(config.head, BATCH_SIZE[None]))
    if encoder.encoder_lr is None:
        encoder = replace(encoder, encoder_lr=ENCODER_LR.get(config.head, ENCODER_LR[None]))
    return config, encoder
