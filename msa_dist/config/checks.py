"""What a good config value is: each set of allowed values and each range, defined once.

Every section's `__post_init__` (schema.py) runs the checks of its own keys, so a bad value fails
with one line naming its dotted key when the config is loaded, before any process group, tokenizer
or model is built. Builders import the allowed sets from here and do not check again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msa_dist.common.errors import MsaDistError

MODALITIES = ("both", "text", "image")
# model.head.fusion -> the model.modality values it works with (gated and cross_attention combine two)
FUSION_MODALITIES = {"concat": MODALITIES, "gated": ("both",), "cross_attention": ("both",), "late": MODALITIES}
FUSIONS_ON_TOKENS = ("cross_attention",)  # heads that take token states, not one vector per modality
POOLINGS = ("cls", "mean", "last")
TINY_ARCHS = ("bert", "bow")
SCHEDULES = ("cosine", "linear", "constant")
LOSSES = ("ce", "focal")
BEST_METRICS = ("accuracy", "macro_f1", "weighted_f1")  # the val metrics that can pick the best checkpoint
EARLY_STOP_METRICS = (*BEST_METRICS, "loss")  # loss (val cross-entropy) is better lower, the others higher
BACKENDS = ("single", "ddp", "deepspeed", "fsdp")
PRECISIONS = ("fp32", "bf16", "fp16")
ZERO_STAGES = (0, 1, 2, 3)
DEVICES = ("auto", "cpu", "cuda")
COMPILE_SCOPES = ("model", "encoders")  # what backend.compile compiles
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
TRAIN_CROPS = ("random", "random_resized", "center")
REPORT_TO = ("jsonl", "tensorboard", "wandb", "mlflow")
UPLOAD_FAILURES = ("continue", "stop")  # what a run on a store does when a checkpoint could not be uploaded
MIN_TINY_VOCAB = 6  # a WordPiece vocabulary holds more than models/tokenizer.py's 5 special tokens


@dataclass(frozen=True)
class Check:
    """One rule for one dotted key. `says` completes "KEY=VALUE: ..." (str.format'ed with the section's
    fields, or a function of (value, section)); `where` is the section the rule runs in when it reads
    a field of another section (e.g. model.head.fusion against model.modality)."""

    key: str
    ok: Callable[[Any, Any], bool]  # (value, section) -> good?
    says: str | Callable[[Any, Any], str]
    where: str | None = None  # "" for a rule across sections (it runs on the whole config)
    name: str = ""  # tells apart two rules of one key

    @property
    def id(self) -> str:
        return f"{self.key}[{self.name}]" if self.name else self.key

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0] if self.where is None else self.where


def one_of(key: str, allowed) -> Check:
    return Check(key, lambda v, _: v in allowed, "must be one of " + ", ".join(map(str, allowed)))


def at_least(key: str, low: int) -> Check:
    return Check(key, lambda v, _: v >= low, f"must be >= {low}")


def between(key: str, low: int, high: int) -> Check:
    """An int in [low, high]: the upper bounds keep a config (one from elsewhere included) from asking for
    a model or a batch that cannot be allocated (a 16,384-wide, 64-layer "tiny" BERT is 800 GB)."""
    return Check(key, lambda v, _: low <= v <= high, f"must be >= {low} and <= {high}")


def fraction(key: str, low_open: bool = False, high_open: bool = True) -> Check:
    """A value in [0, 1) by default; (0, 1] with low_open=True, high_open=False."""

    def ok(v, _):
        return (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)

    return Check(key, ok, f"must be in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


def _is_tiny(kind: str) -> Callable[[Any], bool]:
    return lambda text: text.name == "tiny" and text.tiny_arch == kind


def _unknown_tracker(value, _) -> str:
    unknown = next(name for name in value if name not in REPORT_TO)
    return f"unknown tracker {unknown!r}; use {', '.join(REPORT_TO)}"


_LORA_TARGET = re.compile(r"[A-Za-z0-9_.]+")


def _lora_checks(tower: str) -> tuple[Check, ...]:
    """model.<tower>.lora's keys, checked in model.<tower> (the sub-section has no prefix of its own)."""
    where, key = f"model.{tower}", f"model.{tower}.lora"
    return (
        Check(f"{key}.r", lambda v, _: 0 <= v <= 4096, "must be >= 0 and <= 4096 (0 = off)", where=where),
        Check(f"{key}.alpha", lambda v, _: v > 0, "must be > 0", where=where),
        Check(f"{key}.dropout", lambda v, _: 0 <= v < 1, "must be in [0, 1)", where=where),
        Check(
            f"{key}.targets",
            lambda v, _: all(_LORA_TARGET.fullmatch(name) for name in v),
            "must be module names (letters, digits, _ and .), e.g. query,value",
            where=where,
        ),
        Check(
            f"{key}.r",
            lambda v, sec: not v or (sec.unfreeze_last_n_layers == -1 and not sec.freeze),
            f"LoRA keeps the backbone fixed and trains only its adapters: leave {where}.unfreeze_last_n_layers=-1 "
            f"and {where}.freeze=false",
            where=where,
            name="what_trains",
        ),
    )


CHECKS: tuple[Check, ...] = (
    between("data.image_size", 1, 4096),
    between("data.resize_size", 1, 4096),
    between("data.max_length", 1, 8192),
    at_least("data.pad_to_multiple_of", 1),
    Check(
        "data.pad_to_multiple_of",
        lambda v, d: v < 1 or d.max_length % v == 0,
        "must divide data.max_length={max_length} (a batch is never longer)",
        name="divides",
    ),
    at_least("data.workers", 0),
    at_least("data.chunk_samples", 1),
    one_of("data.read_mode", ("auto", "chunks", "blocks")),
    at_least("data.blocks_above_shards", 0),
    at_least("data.block_bytes", 1),
    at_least("data.shuffle_buffer_samples", 1),
    at_least("data.canonical_partitions", 0),
    at_least("data.block_read_ahead", 1),
    one_of("data.train_crop", TRAIN_CROPS),
    at_least("data.read_threads", 1),
    at_least("data.read_ahead_batches", 1),
    at_least("data.read_gap_bytes", 0),
    at_least("data.length_bucket_batches", 0),
    Check(
        "data.length_bucket_batches",
        lambda v, d: v <= 1 or not d.pad_to_max_length,
        "has no effect with data.pad_to_max_length=true (every batch is padded to max_length): set it to 0",
        name="padding",
    ),
    one_of("model.modality", MODALITIES),
    Check(
        "model.head.fusion",
        lambda v, model: model.modality in FUSION_MODALITIES[v],
        "combines two modalities and does not work with model.modality={modality}: use fusion=concat or "
        "late for one modality",
        where="model",
        name="modality",
    ),
    one_of("model.text.pooling", POOLINGS),
    Check(
        "model.text.pooling",
        lambda v, text: v == "mean" or not _is_tiny("bow")(text),
        "model.text.tiny_arch=bow needs model.text.pooling=mean (its states are not contextual)",
        name="bow",
    ),
    one_of("model.text.tiny_arch", TINY_ARCHS),
    between("model.text.tiny_hidden", 1, 2048),
    between("model.text.tiny_layers", 1, 24),
    between("model.text.tiny_heads", 1, 64),
    Check(
        "model.text.tiny_heads",
        lambda v, text: text.tiny_hidden % v == 0 or not _is_tiny("bert")(text),
        "must divide model.text.tiny_hidden={tiny_hidden}",
        name="divides",
    ),
    between("model.text.tiny_vocab_size", MIN_TINY_VOCAB, 1 << 20),
    between("model.text.tiny_bigram_buckets", 0, 1 << 22),
    between("model.text.tiny_char_buckets", 0, 1 << 22),
    fraction("model.text.tiny_token_dropout"),
    fraction("model.text.tiny_dropout"),
    Check("model.text.tiny_init_std", lambda v, _: v > 0, "must be > 0"),
    Check(
        "model.text.tiny_idf",
        lambda v, text: not v or _is_tiny("bow")(text),
        "needs model.text.name=tiny and model.text.tiny_arch=bow",
    ),
    at_least("model.text.unfreeze_last_n_layers", -1),
    *_lora_checks("text"),
    fraction("model.text.layer_decay", low_open=True, high_open=False),
    between("model.image.tiny_width", 1, 512),
    at_least("model.image.unfreeze_last_n_layers", -1),
    *_lora_checks("image"),
    fraction("model.image.layer_decay", low_open=True, high_open=False),
    between("model.bow.hidden", 0, 2048),
    between("model.bow.bigram_buckets", 0, 1 << 22),
    between("model.bow.char_buckets", 0, 1 << 22),
    fraction("model.bow.token_dropout"),
    Check("model.bow.init_std", lambda v, _: v > 0, "must be > 0"),
    Check(
        "model.bow.hidden",
        lambda v, model: not v or model.modality in ("both", "text"),
        "reads the texts: needs model.modality=both or text",
        where="model",
        name="modality",
    ),
    Check(
        "model.bow.hidden",
        lambda v, model: not v or model.head.fusion not in FUSIONS_ON_TOKENS,
        "joins the pooled text vector: not with model.head.fusion={head.fusion} (use concat, gated or late)",
        where="model",
        name="fusion",
    ),
    one_of("model.head.fusion", tuple(FUSION_MODALITIES)),
    between("model.head.proj_dim", 1, 16384),
    between("model.head.hidden", 1, 16384),
    between("model.head.layers", 0, 64),
    fraction("model.head.dropout"),
    fraction("model.head.modality_dropout"),
    at_least("model.head.attn_layers", 1),
    at_least("model.head.attn_heads", 1),
    Check(
        "model.head.attn_heads",
        lambda v, head: head.fusion != "cross_attention" or head.proj_dim % v == 0,
        "must divide model.head.proj_dim={proj_dim}",
        name="divides",
    ),
    Check(
        "model.head.late_text_linear",
        lambda v, head: not v or head.fusion == "late",
        "needs model.head.fusion=late (the text head it replaces is late fusion's)",
    ),
    at_least("optim.lr", 0),
    at_least("optim.text_lr", 0),
    at_least("optim.image_lr", 0),
    at_least("optim.bow_lr", 0),
    at_least("optim.weight_decay", 0),
    Check("optim.betas", lambda v, _: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    at_least("optim.warmup_steps", 0),
    one_of("optim.schedule", SCHEDULES),
    fraction("optim.min_lr_ratio", high_open=False),
    at_least("optim.grad_clip", 0),
    at_least("train.epochs", 1),
    between("train.batch_size", 1, 1 << 16),
    at_least("train.grad_accum_steps", 1),
    Check("train.seed", lambda v, _: 0 <= v < 2**63, "must be in [0, 2**63): torch and numpy take seeds of 64 bits"),
    between("train.global_batch_size", 0, 1 << 24),
    Check(
        "train.global_batch_size",
        lambda v, train: v % train.batch_size == 0,
        "must be 0 or a multiple of train.batch_size={batch_size}",
        name="multiple",
    ),
    at_least("train.class_weight_power", 0),
    fraction("train.label_smoothing"),
    one_of("train.loss", LOSSES),
    at_least("train.focal_gamma", 0),
    at_least("train.eval_every_epochs", 1),
    at_least("train.max_steps_per_epoch", 0),
    one_of("train.best_metric", BEST_METRICS),
    at_least("train.max_nonfinite_steps", 1),
    at_least("train.early_stop.patience", 0),
    one_of("train.early_stop.metric", EARLY_STOP_METRICS),
    at_least("train.early_stop.min_delta", 0),
    fraction("train.ema_decay"),
    at_least("train.mixup_alpha", 0),
    Check("train.distill_weight", lambda v, _: 0 <= v <= 1, "must be in [0, 1]: the KL term's share of the loss"),
    Check("train.distill_temperature", lambda v, _: 0 < v <= 100, "must be in (0, 100]"),
    Check(
        "train.ema_decay",
        lambda v, cfg: not (v and cfg.backend.name == "deepspeed"),
        "is not supported with backend.name=deepspeed (its weights may be partitioned): use backend.name=ddp",
        where="",
        name="deepspeed",
    ),
    Check(
        "train.mixup_alpha",
        lambda v, cfg: not v or cfg.model.head.fusion not in FUSIONS_ON_TOKENS,
        lambda v, cfg: (
            f"mixes pooled vectors: not with model.head.fusion={cfg.model.head.fusion} (use concat, gated or late)"
        ),
        where="",
        name="fusion",
    ),
    one_of("backend.name", BACKENDS),
    one_of("backend.precision", PRECISIONS),
    one_of("backend.zero_stage", ZERO_STAGES),
    one_of("backend.device", DEVICES),
    at_least("backend.ddp_bucket_mb", 1),
    at_least("backend.timeout_s", 1),
    Check(
        "backend.compile",
        lambda v, backend: not (v and backend.name == "deepspeed"),
        "is not supported with backend.name=deepspeed: set backend.compile=false or use backend.name=ddp",
    ),
    Check(
        "backend.precision",
        lambda v, backend: not (v == "fp16" and backend.name == "fsdp"),
        "is not supported with backend.name=fsdp (no sharded loss scaler here): use backend.precision=bf16 or fp32",
        name="fsdp",
    ),
    one_of("backend.compile_scope", COMPILE_SCOPES),
    one_of("backend.compile_mode", COMPILE_MODES),
    at_least("checkpoint.keep_last", 1),
    at_least("checkpoint.every_steps", 0),
    one_of("checkpoint.upload_failure", UPLOAD_FAILURES),
    at_least("checkpoint.upload_attempts", 1),
    at_least("checkpoint.lock_lease_s", 3),
    at_least("log.every_steps", 1),
    Check("log.report_to", lambda v, _: all(name in REPORT_TO for name in v), _unknown_tracker),
)
_BY_SECTION: dict[str, list[Check]] = {}
for _check in CHECKS:
    _BY_SECTION.setdefault(_check.section, []).append(_check)


def check_section(section: Any, prefix: str) -> None:
    """Run the checks of the section at dotted `prefix`; raise `MsaDistError` at the first bad value."""
    for check in _BY_SECTION.get(prefix, ()):
        value = section
        for part in check.key.removeprefix(f"{prefix}.").split("."):
            value = getattr(value, part)
        if not check.ok(value, section):
            says = check.says(value, section) if callable(check.says) else check.says.format_map(vars(section))
            raise MsaDistError(f"{check.key}={_show(value)}: {says}")


def _show(value: Any) -> str:
    """A value as written on the command line; quoted only where that would be unclear (one line always)."""
    if isinstance(value, str) and value and value.isprintable() and " " not in value:
        return value
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return repr(value)
