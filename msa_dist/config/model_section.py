"""The `model` section of the config: the text and image encoders and the fusion head."""

from __future__ import annotations

from dataclasses import dataclass, field

from msa_dist.config.checks import check_section


@dataclass
class LoraAdapterConfig:
    """LoRA adapters on one tower (peft): the backbone's weights stay fixed, only the adapters train."""

    r: int = 0  # rank of each adapter; 0 = off (the backbone trains as its other keys say)
    alpha: float = 16.0  # scaling: an adapter's update is multiplied by alpha / r
    dropout: float = 0.0  # dropout on an adapter's input (training only)
    # module names (or name suffixes) that get adapters; empty = the architecture's usual ones (BERT: query, value;
    # CLIP: q_proj, v_proj; EfficientNet-Lite: conv_pw, conv_pwl, conv_head; timm ViTs: qkv)
    targets: list[str] = field(default_factory=list)

    def __post_init__(self):
        pass  # checked by model.text and model.image (config/checks.py): the two have different dotted names


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
    lora: LoraAdapterConfig = field(default_factory=LoraAdapterConfig)  # LoRA adapters on the text backbone

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
    lora: LoraAdapterConfig = field(default_factory=LoraAdapterConfig)  # LoRA adapters on the image backbone

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
class BowBranchConfig:
    # > 0: a third input, a TF-IDF bag of n-grams (models/bow.py) of this width on the text encoder's own tokens,
    # trained from scratch beside it; its vector joins the text vector before the fusion head. 0 = off
    hidden: int = 0
    bigram_buckets: int = 50000  # hashed token-bigram embeddings (0 = tokens only)
    char_buckets: int = 50000  # hashed character 2-5-gram embeddings of each token (0 = none)
    token_dropout: float = 0.1  # training: fraction of tokens dropped from each text
    idf: bool = True  # weight n-grams by inverse document frequency in the train texts (TF-IDF), else a plain mean
    init_std: float = 0.1  # std of the embeddings' random init

    def __post_init__(self):
        check_section(self, "model.bow")


@dataclass
class ModelConfig:
    modality: str = "both"  # both | text | image: the seed's ablations with the same code
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    bow: BowBranchConfig = field(default_factory=BowBranchConfig)  # the optional bag-of-n-grams text branch

    def __post_init__(self):
        check_section(self, "model")
