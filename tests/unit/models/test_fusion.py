"""Fusion heads, modality dropout, backbones (CLIP, timm, partial unfreezing, layer-wise lr decay), and
every shipped config building its model (tiny stand-ins for absent weights). Losses:
tests/unit/engine/test_losses.py; logit offsets: tests/unit/inference/test_calibration.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    DebertaV2Config,
    DebertaV2Model,
    RobertaConfig,
    RobertaModel,
)

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import NUM_CLASSES
from msa_dist.config.model_section import HeadConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from msa_dist.config.schema import OptimConfig, load_config
from msa_dist.engine.optim import build_optimizer, optimizer_param_groups
from msa_dist.models import build_model
from msa_dist.models.fusion import FUSIONS, supports
from msa_dist.models.image import build_image_encoder
from msa_dist.models.layers import parameter_depths
from msa_dist.models.pretrained import TEXT_BACKBONES
from msa_dist.models.text import build_text_encoder
from msa_dist.models.tokenizer import load_pretrained_tokenizer, train_wordpiece_tokenizer

VOCAB = 60
CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


def tiny_cfg(fusion="concat", modality="both", **head) -> ModelConfig:
    return ModelConfig(
        modality=modality,
        text=TextEncoderConfig(name="tiny", tiny_hidden=32, tiny_layers=2, tiny_heads=2),
        image=ImageEncoderConfig(name="tiny", weights="none", tiny_width=8),
        head=HeadConfig(fusion=fusion, proj_dim=16, hidden=32, attn_heads=2, **head),
    )


def batch(n=4, seed=0, image_px=32):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (n, 7), generator=gen)
    attention_mask = torch.ones(n, 7, dtype=torch.long)
    attention_mask[1, 4:] = 0
    input_ids[1, 4:] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "images": torch.randn(n, 3, image_px, image_px, generator=gen),
    }


@pytest.mark.parametrize("fusion,modality", list(itertools.product(FUSIONS, ("both", "text", "image"))))
def test_every_fusion_and_modality_trains_a_step_or_says_why_not(fusion, modality):
    torch.manual_seed(0)
    if not supports(fusion, modality):  # the config refuses the pair before any model is built
        with pytest.raises(MsaDistError, match=f"fusion={fusion}.*modality={modality}") as err:
            tiny_cfg(fusion, modality, modality_dropout=0.3)
        assert "\n" not in str(err.value)
        return
    cfg = tiny_cfg(fusion, modality, modality_dropout=0.3)
    model = build_model(cfg, VOCAB)
    optimizer = build_optimizer(OptimConfig(lr=1e-2, text_lr=1e-2, image_lr=1e-2), model.parameter_groups())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits = model(**batch())
    assert logits.shape == (4, NUM_CLASSES)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    # DDP (find_unused_parameters=False) needs a gradient for every trainable parameter
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("head.") for n in changed)
    assert any(n.startswith("text_encoder.") for n in changed) == (modality != "image")
    assert any(n.startswith("image_encoder.") for n in changed) == (modality != "text")


def test_late_fusion_is_the_mean_of_the_unimodal_heads():
    model = build_model(tiny_cfg("late"), VOCAB).eval()
    inputs = batch()
    with torch.no_grad():
        text_emb = model.text_encoder(inputs["input_ids"], inputs["attention_mask"])
        image_emb = model.image_encoder(inputs["images"])
        expected = (model.head.text_head(text_emb=text_emb) + model.head.image_head(image_emb=image_emb)) / 2
        torch.testing.assert_close(model(**inputs), expected)


def test_cross_attention_reads_image_regions_and_ignores_text_padding():
    cfg = tiny_cfg("cross_attention")
    cfg.image = ImageEncoderConfig(name="resnet18", weights="none")
    model = build_model(cfg, VOCAB).eval()
    inputs = batch(image_px=64)
    assert model.image_encoder.forward_tokens(inputs["images"]).shape == (4, 4, 512)  # a 2x2 map at 64 px
    with torch.no_grad():
        logits = model(**inputs)
        changed = dict(inputs, input_ids=inputs["input_ids"].clone())
        changed["input_ids"][1, 4:] = 7  # only padded positions of sample 1
        torch.testing.assert_close(model(**changed), logits)
        other_image = dict(inputs, images=inputs["images"].flip(0))
        assert not torch.allclose(model(**other_image), logits)  # the check above could fail


def test_modality_dropout_zeroes_one_modality_per_sample_in_training_only():
    model = build_model(tiny_cfg("concat", modality_dropout=0.999), VOCAB)
    seen = {}

    def spy(module, args, kwargs):
        seen.update(kwargs)

    model.head.register_forward_pre_hook(spy, with_kwargs=True)
    torch.manual_seed(0)
    model.train()(**batch(n=64))
    text_zero = (seen["text_emb"] == 0).all(dim=1)
    image_zero = (seen["image_emb"] == 0).all(dim=1)
    assert (text_zero ^ image_zero).all()  # exactly one modality dropped per sample
    assert 10 < text_zero.sum() < 54  # and which one is random
    model.eval()(**batch(n=64))
    assert not (seen["text_emb"] == 0).all(dim=1).any() and not (seen["image_emb"] == 0).all(dim=1).any()


def test_parameter_depths_for_bert_resnet_and_tiny_cnn():
    bert = build_text_encoder(TextEncoderConfig(name="tiny", tiny_hidden=32, tiny_layers=3, tiny_heads=2), VOCAB)
    depths, n = parameter_depths(bert.model)
    assert n == 3
    assert depths["embeddings.word_embeddings.weight"] == 0
    assert depths["encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["encoder.layer.2.output.dense.weight"] == 3
    resnet = build_image_encoder(ImageEncoderConfig(name="resnet18", weights="none"))
    depths, n = parameter_depths(resnet.backbone)
    assert n == 4 and depths["conv1.weight"] == 0 and depths["layer1.0.conv1.weight"] == 1
    assert depths["layer4.1.bn2.bias"] == 4


def test_partial_unfreezing_and_layer_wise_lr_decay():
    cfg = tiny_cfg()
    cfg.text = TextEncoderConfig(
        name="tiny", tiny_hidden=32, tiny_layers=3, tiny_heads=2, unfreeze_last_n_layers=1, layer_decay=0.5
    )
    cfg.image = ImageEncoderConfig(name="resnet18", weights="none", unfreeze_last_n_layers=2)
    model = build_model(cfg, VOCAB)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "text_encoder.model.encoder.layer.2.output.dense.weight" in trainable
    assert "text_encoder.model.encoder.layer.1.output.dense.weight" not in trainable
    assert "text_encoder.model.embeddings.word_embeddings.weight" not in trainable
    assert "image_encoder.backbone.layer3.0.conv1.weight" in trainable
    assert "image_encoder.backbone.layer2.0.conv1.weight" not in trainable
    groups = model.parameter_groups()
    assert list(groups)[-1] == "head" and groups["text"] == []
    assert {k for k in groups if k.startswith("text*")} == {"text*0.5"}  # only the top layer is trainable
    optim = OptimConfig(lr=1e-3, text_lr=1e-4, image_lr=2e-4)
    lrs = {g["name"]: g["lr"] for g in optimizer_param_groups(optim, groups)}
    assert lrs["text*0.5"] == pytest.approx(5e-5) and lrs["image"] == 2e-4 and lrs["head"] == 1e-3
    cfg.text.unfreeze_last_n_layers = -1
    all_layers = build_model(cfg, VOCAB).parameter_groups()
    # embeddings sit 4 levels below the top (3 layers + nothing after them)
    assert {k for k in all_layers if k.startswith("text*")} == {"text*0.0625", "text*0.125", "text*0.25", "text*0.5"}
    with pytest.raises(MsaDistError, match="model.text.layer_decay"):
        TextEncoderConfig(name="tiny", layer_decay=1.5)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised CLIPModel (both towers) and a tokenizer saved like a downloaded checkpoint."""
    directory = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    tok = train_wordpiece_tokenizer(["a happy day", "a sad rainy day", "the office"], vocab_size=VOCAB)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=40,
            bos_token_id=2,
            eos_token_id=3,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_clip_towers_from_one_checkpoint(tiny_clip_dir, tmp_path):
    reference = CLIPModel.from_pretrained(tiny_clip_dir)
    cfg = tiny_cfg("cross_attention")
    cfg.text = TextEncoderConfig(name=f"clip:{tiny_clip_dir}", pooling="last")
    cfg.image = ImageEncoderConfig(name=f"clip:{tiny_clip_dir}", weights="none")
    model = build_model(cfg, vocab_size=0)
    assert torch.equal(
        model.text_encoder.model.embeddings.token_embedding.weight,
        reference.text_model.embeddings.token_embedding.weight,
    )
    assert torch.equal(
        model.image_encoder.backbone.embeddings.patch_embedding.weight,
        reference.vision_model.embeddings.patch_embedding.weight,
    )
    tokenizer = load_pretrained_tokenizer(f"clip:{tiny_clip_dir}")
    enc = tokenizer(["a happy day", "sad"], padding="longest", return_tensors="pt")
    images = torch.randn(2, 3, 64, 64)  # not the checkpoint's 32 px: position embeddings are interpolated
    assert model.image_encoder.forward_tokens(images).shape == (2, 64, 32)
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], images=images)
    assert logits.shape == (2, NUM_CLASSES)
    # the "last" pooling takes each text's final real token (CLIP's EOS), not padding
    states = model.text_encoder.forward_tokens(enc["input_ids"], enc["attention_mask"])
    pooled = model.text_encoder(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(pooled[1], states[1, int(enc["attention_mask"][1].sum()) - 1])
    rebuilt = build_model(cfg, vocab_size=0, pretrained=False)  # the architecture alone, for a checkpoint
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(MsaDistError, match="not CLIP"):
        build_image_encoder(ImageEncoderConfig(name=f"clip:{_save_tiny(BertModel, BertConfig, tmp_path / 'bert')}"))


def test_bag_of_ngrams_text_encoder_averages_token_and_bigram_embeddings():
    cfg = TextEncoderConfig(name="tiny", tiny_arch="bow", pooling="mean", tiny_hidden=8, tiny_bigram_buckets=50)
    encoder = build_text_encoder(cfg, VOCAB).eval()
    ids = torch.tensor([[2, 10, 11, 3, 0], [2, 11, 10, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    emb = encoder(ids, mask)
    assert emb.shape == (2, 8)
    unigrams = encoder.model.tokens(ids[0, :4]).mean(0)
    assert not torch.allclose(emb[0], emb[1])  # same tokens, other order: the bigrams differ
    cfg.tiny_bigram_buckets = 0
    plain = build_text_encoder(cfg, VOCAB)
    plain.model.tokens.weight.data.copy_(encoder.model.tokens.weight)
    torch.testing.assert_close(plain(ids, mask)[0], unigrams)
    torch.testing.assert_close(plain(ids, mask)[0], plain(ids, mask)[1])  # order-free without bigrams
    with pytest.raises(MsaDistError, match="pooling=mean"):
        TextEncoderConfig(name="tiny", tiny_arch="bow", pooling="cls")


def test_timm_backbone_pooled_and_region_tokens():
    timm = pytest.importorskip("timm")
    encoder = build_image_encoder(ImageEncoderConfig(name="timm:test_resnet", weights="none", unfreeze_last_n_layers=1))
    images = torch.randn(2, 3, 64, 64)
    assert encoder(images).shape == (2, encoder.out_dim)
    tokens = encoder.forward_tokens(images)
    assert tokens.shape[0] == 2 and tokens.shape[2] == encoder.token_dim
    assert not all(p.requires_grad for p in encoder.parameters())
    assert timm.is_model("test_resnet")
    with pytest.raises(MsaDistError, match="unknown timm model"):
        build_image_encoder(ImageEncoderConfig(name="timm:no_such_net", weights="none"))


# Tiny stand-ins, by the hub name a shipped config uses: the same model class, random weights.
TEXT_STAND_INS = {
    "bert-base-uncased": (BertModel, BertConfig),
    "roberta-base": (RobertaModel, RobertaConfig),
    "microsoft/deberta-v3-base": (DebertaV2Model, DebertaV2Config),
}


def _save_tiny(model_cls, config_cls, directory: Path) -> Path:
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
    )
    model_cls(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_builds_its_model(path, tiny_clip_dir, tmp_path):
    cfg = load_config(path)
    text, image = cfg.model.text, cfg.model.image
    if text.name.startswith("clip:"):
        text.name = f"clip:{tiny_clip_dir}"
    elif text.name in TEXT_BACKBONES:
        pass  # a packaged backbone: the real, small weights of the `pretrained` extra
    elif text.name != "tiny":
        assert text.name in TEXT_STAND_INS, f"{path.name}: add a tiny stand-in for {text.name} to this test"
        text.name = str(_save_tiny(*TEXT_STAND_INS[text.name], tmp_path / "text"))
    if image.name.startswith("clip:"):
        image.name = f"clip:{tiny_clip_dir}"
    elif image.name.startswith("timm:"):
        pytest.importorskip("timm")
    image.weights = "none"  # the architecture is real (torchvision / timm), its weights random
    text.tiny_vocab_size = VOCAB
    model = build_model(cfg.model, vocab_size=VOCAB)
    build_optimizer(cfg.optim, model.parameter_groups())
    with torch.no_grad():
        logits = model.eval()(**batch(n=2, image_px=64))
    assert logits.shape == (2, NUM_CLASSES)


def test_late_fusion_with_a_linear_text_head_averages_its_logits_with_the_image_heads():
    from msa_dist.models.fusion import LateFusionHead

    head = LateFusionHead(HeadConfig(fusion="late", proj_dim=8, hidden=8, late_text_linear=True), 6, 5).eval()
    assert isinstance(head.text_head, torch.nn.Linear) and head.text_head.out_features == NUM_CLASSES
    text_emb, image_emb = torch.randn(3, 6), torch.randn(3, 5)
    expected = (head.text_head(text_emb) + head.image_head(image_emb=image_emb)) / 2
    assert torch.allclose(head(text_emb=text_emb, image_emb=image_emb), expected)
    text_only = LateFusionHead(HeadConfig(fusion="late", late_text_linear=True), 6, None)
    assert torch.equal(text_only(text_emb=text_emb), text_only.text_head(text_emb))
