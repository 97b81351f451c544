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
from msa_dist.config.values import apply_values, build, merge, nest, parse_override, typed_values


@dataclass
class DataConfig:
    # shard set written by `msa-dist shards build` (holds manifest.json): a folder, file://, http(s):// or fsspec URL
    shards: str = "shards"
    image_size: int = 224  # side of the square crop fed to the image encoder, in pixels
    resize_size: int = 224  # eval: shorter side is resized to this before the center crop (the seed: 224)
    max_length: int = 128  # text tokens per sample at most; batches pad to their longest sample
    workers: int = 2  # DataLoader worker processes per rank
    # train order: runs of this many consecutive samples of the split stay together (one request; two where a run
    # crosses a shard boundary); the runs are shuffled per epoch by a keyed permutation computed on demand. Larger:
    # fewer requests, less mixing
    chunk_samples: int = 4
    resampled: bool = False  # draw the runs with replacement instead of reading each once per epoch
    # train reads: chunks (a ranged read per chunk_samples run) | blocks (a read per block_bytes of a shard, mixed in a
    # shuffle buffer: docs/data-scale.md) | auto (blocks past blocks_above_shards shards, unless resampled or buckets)
    read_mode: str = "auto"
    blocks_above_shards: int = 1000  # read_mode=auto: a train split of more shards than this is read in blocks
    block_bytes: int = 4 << 20  # blocks mode: bytes of one block (one ranged read); a shard is cut into equal blocks
    shuffle_buffer_samples: int = 4096  # blocks mode: samples in each partition's shuffle buffer (per worker)
    # blocks mode: the order's partitions, the same for layouts whose world x lcm(accum, workers) divides it (0: ours)
    canonical_partitions: int = 0
    block_read_ahead: int = 2  # blocks mode: blocks of a partition read ahead of its shuffle buffer
    # ranged reads each loader worker keeps in flight (threads, each with its own connection): hides a remote store's
    # per-request latency
    read_threads: int = 32
    # batches a loader worker plans (and coalesces) together; up to twice this many are being read ahead
    read_ahead_batches: int = 4
    # read-ahead merges runs of one shard into one request when at most this many bytes lie between them
    read_gap_bytes: int = 4096
    pin_memory: bool = True  # page-locked host batches for faster copies to a GPU
    image_draft: bool = True  # decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) when they are much larger
    # random (image_size crop at resize_size scale: no resize on shards stored at resize_size, the default) |
    # random_resized (area 50-100%, then resized: the loader resizes every image) | center (no augmentation); each
    # with a random flip except center
    train_crop: str = "random"
    # pad every batch to max_length (the seed's fixed shapes) instead of its longest text
    pad_to_max_length: bool = False
    # round each batch's text length up to a multiple of this (fewer shapes for compile / cuDNN plans); 1 = off
    pad_to_multiple_of: int = 1
    decode_on_device: bool = False  # ship JPEG bytes + crop boxes; decode and crop on the GPU (nvJPEG)
    # training: regroup each rank's batches, this many at a time, by text length (less padding, less random batches;
    # data/loading/buckets.py); 0 or 1 = off
    length_bucket_batches: int = 0

    def __post_init__(self):
        check_section(self, "data")


@dataclass
class TextEncoderConfig:
    # a packaged backbone ("minilm-l6", sha256-checked), Hugging Face hub name, local directory, or "tiny" (from
    # scratch)
    name: str = "bert-base-uncased"
    # cls | mean | last: how token states become one text vector (last: the last real token, for a causal model such
    # as CLIP's text tower)
    pooling: str = "cls"
    freeze: bool = False  # keep the text backbone's weights fixed
    tiny_hidden: int = 128  # tiny model only: hidden size
    tiny_layers: int = 2  # tiny model only: transformer layers
    tiny_heads: int = 2  # tiny model only: attention heads
    tiny_vocab_size: int = 8000  # tiny model only: WordPiece vocabulary trained on the train texts
    tiny_arch: str = "bert"  # tiny model only: bert (a small transformer) | bow (bag of token + bigram embeddings)
    tiny_bigram_buckets: int = 0  # tiny bow only: hashed token-bigram embeddings (0 = tokens only)
    tiny_char_buckets: int = 0  # tiny bow only: hashed character 2-5-gram embeddings of each token (0 = none)
    tiny_token_dropout: float = 0.0  # tiny bow only, training: fraction of tokens dropped from each text
    # tiny bow only: weight n-grams by inverse document frequency in the train texts, L2-normalised per text (TF-IDF's
    # weighting)
    tiny_idf: bool = False
    # tiny bow only: std of the embeddings' random init (small: the text side starts near a linear model)
    tiny_init_std: float = 0.1
    tiny_dropout: float = 0.1  # tiny model only: BERT's hidden and attention dropout
    unfreeze_last_n_layers: int = -1  # train only the top N transformer layers (and what follows them); -1 = all
    layer_decay: float = 1.0  # layer-wise lr decay: each layer below the top gets this factor more; 1 = off
    # recompute each layer's activations in backward: less memory, ~1/3 more compute
    gradient_checkpointing: bool = False

    def __post_init__(self):
        check_section(self, "model.text")


@dataclass
class ImageEncoderConfig:
    # a packaged backbone ("efficientnet-lite0/1/2", sha256-checked), torchvision model name (resnet18/34/50/101...)
    # or "tiny" (small CNN)
    name: str = "resnet50"
    weights: str = "imagenet"  # imagenet | none | path to a local state_dict file (.pth)
    freeze: bool = False  # keep the image backbone's weights fixed
    tiny_width: int = 32  # tiny CNN only: channels of the first stage
    channels_last: bool = False  # use the channels_last memory format (faster convs on GPUs)
    unfreeze_last_n_layers: int = -1  # train only the top N stages/blocks (and what follows them); -1 = all
    layer_decay: float = 1.0  # layer-wise lr decay: each stage/block below the top gets this factor more; 1 = off
    gradient_checkpointing: bool = False  # ResNets: recompute each residual block's activations in backward

    def __post_init__(self):
        check_section(self, "model.image")


@dataclass
class HeadConfig:
    # concat | gated | cross_attention | late: how the two modalities are combined (gated and cross_attention need
    # model.modality=both)
    fusion: str = "concat"
    proj_dim: int = 256  # each modality's feature is projected to this width before fusion
    hidden: int = 512  # width of the MLP's hidden layers
    layers: int = 1  # hidden layers in the MLP
    dropout: float = 0.1  # dropout before each MLP layer
    modality_dropout: float = 0.0  # training only: fraction of samples that lose one modality (chosen at random)
    attn_layers: int = 1  # cross_attention only: bidirectional text<->image attention blocks
    attn_heads: int = 4  # cross_attention only: attention heads (must divide proj_dim)
    # late only: the text head is one linear layer to logits (with model.text.tiny_idf: a linear model of TF-IDF
    # features)
    late_text_linear: bool = False

    def __post_init__(self):
        check_section(self, "model.head")


@dataclass
class ModelConfig:
    modality: str = "both"  # both | text | image: the seed's ablations with the same code
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self):
        check_section(self, "model")


@dataclass
class OptimConfig:
    lr: float = 1e-4  # learning rate of the fusion head
    text_lr: float = 2e-5  # learning rate of the text backbone
    image_lr: float = 1e-4  # learning rate of the image backbone
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

    def __post_init__(self):
        check_section(self, "train")


@dataclass
class BackendConfig:
    name: str = "single"  # single | ddp | deepspeed
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

    def __post_init__(self):
        check_section(self, "backend")


@dataclass
class CheckpointConfig:
    keep_last: int = 2  # step checkpoints kept besides `best`
    every_steps: int = 0  # also save every N optimizer steps (0 = only at epoch ends)

    def __post_init__(self):
        check_section(self, "checkpoint")


@dataclass
class LogConfig:
    progress: bool = True  # rich progress bar (off for non-interactive runs, e.g. tests)
    every_steps: int = 10  # write a train record to metrics.jsonl every N optimizer steps
    # trackers on rank 0: jsonl (metrics.jsonl, always on) | tensorboard (RUN_DIR/tensorboard) | wandb (pip install
    # 'msa-dist[wandb]')
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
