"""The config schema: a tree of dataclasses, loaded as defaults < YAML file < dotted CLI overrides.

Unknown keys, values of the wrong type (values.py) and bad values (checks.py, run by
each section's `__post_init__`) raise `MsaDistError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msa_dist.common.atomic import write_atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.config.checks import check_section
from msa_dist.config.data_section import DataConfig
from msa_dist.config.model_section import ModelConfig
from msa_dist.config.values import apply_values, build, merge, nest, parse_override, typed_values


@dataclass
class OptimConfig:
    lr: float = 1e-4  # learning rate of the fusion head
    text_lr: float = 2e-5  # learning rate of the text backbone
    image_lr: float = 1e-4  # learning rate of the image backbone
    bow_lr: float = 3e-3  # learning rate of the bag-of-n-grams branch (model.bow; its rare n-grams need large steps)
    weight_decay: float = 0.01  # AdamW weight decay (not applied to biases and norms)
    betas: tuple = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = 50  # optimizer steps of linear warmup
    schedule: str = "cosine"  # cosine | linear | constant: decay after warmup
    min_lr_ratio: float = 0.0  # final learning rate as a fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    fused: bool = False  # fused AdamW kernel (GPU only)

    def __post_init__(self):
        check_section(self, "optim")


@dataclass
class EarlyStopConfig:
    patience: int = 0  # evaluations without improvement before the run stops (0 = never stop early)
    metric: str = "macro_f1"  # accuracy | macro_f1 | weighted_f1 (higher is better) | loss (val cross-entropy, lower)
    min_delta: float = 0.0  # an evaluation improves only if it beats the best so far by more than this

    def __post_init__(self):
        check_section(self, "train.early_stop")


@dataclass
class TrainConfig:
    epochs: int = 3  # passes over the train split
    batch_size: int = 32  # micro batch per rank
    grad_accum_steps: int = 1  # micro batches per optimizer step
    global_batch_size: int = 0  # if > 0: samples per optimizer step; grad_accum_steps = this / (batch_size x ranks)
    seed: int = 0  # seeds weights, augmentation and shuffling: a run is repeatable
    class_weighting: bool = False  # weight the loss by inverse class frequency of the train split
    class_weight_power: float = 1.0  # class_weighting only: weights = (inverse frequency)^power; 0.5 is gentler
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    loss: str = "ce"  # ce | focal: focal down-weights samples the model already gets right
    focal_gamma: float = 2.0  # focal loss only: exponent of (1 - p_true)
    eval_every_epochs: int = 1  # evaluate on val every N epochs (and after the last)
    max_steps_per_epoch: int = 0  # cap optimizer steps per epoch (0 = the whole split); for smoke runs
    best_metric: str = "macro_f1"  # accuracy | macro_f1 | weighted_f1: the val metric that picks the best checkpoint
    max_nonfinite_steps: int = 10  # consecutive non-finite losses before the run stops
    # > 0: validate and save an exponential moving average of the weights (e.g. 0.99); not with DeepSpeed
    ema_decay: float = 0.0
    # > 0: mix pairs of samples' text and image vectors before the head, lambda ~ Beta(alpha, alpha)
    mixup_alpha: float = 0.0
    deterministic: bool = False  # torch deterministic algorithms (debug mode)
    detect_anomaly: bool = False  # autograd anomaly detection (debug mode; slow)
    # plain model.pt to start a new run from (weights only; e.g. a consolidated DeepSpeed checkpoint)
    init_from: str = ""
    # stop when the val metric has not improved for `patience` evaluations (engine/early_stop.py)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    # JSON file of a teacher's class probabilities per train sample guid (written by `msa-dist distill`):
    # the loss blends the hard labels with a KL divergence to it; "" trains on the labels alone
    teacher: str = ""
    distill_weight: float = 0.5  # with train.teacher: the KL term's share; the hard-label loss gets 1 - this
    distill_temperature: float = 2.0  # with train.teacher: softens teacher and student alike; the KL is scaled by T^2

    def __post_init__(self):
        check_section(self, "train")


@dataclass
class BackendConfig:
    name: str = "single"  # single | ddp | deepspeed | fsdp (PyTorch FSDP2: fully_shard per encoder block)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    deepspeed_config: str = ""  # optional DeepSpeed JSON merged over the generated one
    device: str = "auto"  # auto | cpu | cuda
    ddp_bucket_mb: int = 25  # DDP gradient bucket size
    ddp_static_graph: bool = False  # DDP static graph optimisation
    compile: bool = False  # torch.compile the model
    # with compile: model (the whole model) | encoders (text and image encoders, head eager)
    compile_scope: str = "model"
    # with compile: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # GPUs: let scaled-dot-product attention use cuDNN's kernel (it builds a plan per new shape)
    cudnn_sdpa: bool = True
    timeout_s: int = 1800  # process-group timeout: a rank waiting longer for a peer in a collective fails the run
    # fsdp: free each block's gathered weights after its forward (gathered again for backward) or keep them
    fsdp_reshard_after_forward: bool = True

    def __post_init__(self):
        check_section(self, "backend")


@dataclass
class CheckpointConfig:
    keep_last: int = 2  # step checkpoints kept besides `best`
    every_steps: int = 0  # also save every N optimizer steps (0 = only at epoch ends)
    # a run dir on a store (s3://...): continue | stop when a checkpoint's upload failed past its attempts
    upload_failure: str = "continue"
    upload_attempts: int = 3  # a run dir on a store: tries of each upload (pause doubling from 1 s)
    # a run dir on a store: seconds the run dir's lock lasts unless renewed (every third of it) by its holder
    lock_lease_s: int = 60

    def __post_init__(self):
        check_section(self, "checkpoint")


@dataclass
class LogConfig:
    progress: bool = True  # rich progress bar (off for non-interactive runs, e.g. tests)
    every_steps: int = 10  # write a train record to metrics.jsonl every N optimizer steps
    # trackers on rank 0: jsonl (metrics.jsonl, always on) | tensorboard (RUN_DIR/tensorboard) | wandb (pip install
    # 'msa-dist[wandb]') | mlflow (pip install 'msa-dist[mlflow]'; MLFLOW_TRACKING_URI or RUN_DIR/mlflow.db)
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])

    def __post_init__(self):
        check_section(self, "log")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):  # checks that read two sections would run here
        check_section(self, "")


def set_dotted(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key (e.g. 'optim.lr') in place with type checking; `validate` checks the value."""
    apply_values(cfg, nest(key, value))


def validate(cfg: Config) -> Config:
    """Run every section's checks again on a config changed in place (e.g. a sweep point)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value)
    cfg.__post_init__()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Build a Config: defaults < `base` dict < YAML file < dotted overrides.

    The layers are typed and merged first and the tree is built once, so the value checks see the
    final values (a YAML file's proj_dim with an override's attn_heads)."""
    layers = [typed_values(Config, base or {})]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MsaDistError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise MsaDistError(
                f"config file {path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r})"
            ) from None
        except yaml.YAMLError as exc:
            raise MsaDistError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        layers.append(typed_values(Config, data))
    for item in overrides or []:
        layers.append(typed_values(Config, nest(*parse_override(item))))
    return build(Config, merge(layers))


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (tuples become lists), for YAML/JSON/checkpoints; secrets in
    URLs (userinfo, query) are redacted: this is what gets written down (common/urls.py)."""
    from msa_dist.common.urls import redact_values

    def conv(v):
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return redact_values(conv(dataclasses.asdict(cfg)))


def from_dict(values: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. the copy saved inside a checkpoint)."""
    return build(Config, typed_values(Config, values))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))  # never through a link planted there
