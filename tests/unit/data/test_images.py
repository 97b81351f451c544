"""The fast decode/crop path (data/loading/images.py): JPEG sizes from the frame header, crop boxes, the
decoder's fallbacks and drafted decodes."""

from __future__ import annotations

import io
import random

import pytest
import torch
from PIL import Image

from msa_dist.data.loading.images import (
    ImageCropper,
    center_crop_box,
    decode_rgb,
    jpeg_size,
    random_crop_box,
    stored_size,
)


def _jpeg(size: tuple[int, int], mode: str = "RGB", **save) -> bytes:
    image = Image.new(mode, size, 120 if mode == "L" else (200, 40, 90))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **save)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode, save",
    [("RGB", {}), ("RGB", {"progressive": True}), ("L", {}), ("RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 64})],
)
def test_jpeg_size_reads_the_frame_header(mode, save):
    data = _jpeg((67, 41), mode, **save)
    assert jpeg_size(data) == (67, 41) == Image.open(io.BytesIO(data)).size


def test_non_jpeg_size_falls_back_to_pil():
    buf = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buf, format="PNG")
    assert jpeg_size(buf.getvalue()) is None
    assert stored_size(buf.getvalue()) == (30, 20)


def test_eval_crop_box_is_resize_then_center_crop():
    # Resize(256) of a 512x384 image gives 341x256; CenterCrop(224) of that is 298.7px of the original.
    box = center_crop_box(512, 384, resize_size=256, image_size=224)
    assert (box.height, box.width) == (336, 336) and (box.top, box.left) == (24, 88) and not box.flip


def test_random_crop_box_on_shards_at_resize_size_needs_no_resize():
    rng = random.Random(0)
    boxes = [random_crop_box(rng, 341, 256, resize_size=256, image_size=224) for _ in range(200)]
    assert all((b.height, b.width) == (224, 224) for b in boxes)
    assert all(0 <= b.top <= 32 and 0 <= b.left <= 117 for b in boxes)
    assert len({(b.top, b.left) for b in boxes}) > 100 and 50 < sum(b.flip for b in boxes) < 150
    # stored larger than resize_size: the box covers image_size / resize_size of the shorter side
    big = random_crop_box(random.Random(1), 1024, 512, resize_size=256, image_size=224)
    assert (big.height, big.width) == (448, 448)
    data = _jpeg((341, 256), "RGB")
    cropper = ImageCropper(224, 256, train=True, train_crop="random")
    box = cropper.box(random.Random(2), 341, 256)
    out = cropper(data, box, 341, 256)
    full = decode_rgb(data, 341, 256)[:, box.top : box.top + 224, box.left : box.left + 224]
    assert torch.equal(out, full.flip(-1) if box.flip else full)  # a crop (and flip), no resampling
    assert ImageCropper(224, 256, train=True, train_crop="center").box(None, 341, 256) == center_crop_box(
        341, 256, 256, 224
    )


def test_decoder_falls_back_for_jpegs_simplejpeg_rejects():
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(buf, format="JPEG")  # red, in CMYK
    image = decode_rgb(buf.getvalue(), 40, 30)
    assert image.shape == (3, 30, 40) and image[0].float().mean() > 200 and image[1].float().mean() < 60
    # drafted decodes shrink by powers of two and stay >= the size asked for
    data = _jpeg((400, 300), "RGB")
    assert decode_rgb(data, 400, 300, draft_size=70).shape == (3, 75, 100)
    assert decode_rgb(data, 400, 300, draft_size=160).shape == (3, 300, 400)


def test_draft_decode_crops_the_same_region():
    # A 4-quadrant image: the crop's colours must not depend on whether PIL drafted the decode.
    image = Image.new("RGB", (512, 384), (255, 0, 0))
    image.paste((0, 0, 255), (256, 0, 512, 384))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    box = ImageCropper(32, 40, train=False).box(None, 512, 384)
    drafted = ImageCropper(32, 40, train=False, draft=True)(data, box, 512, 384)
    full = ImageCropper(32, 40, train=False, draft=False)(data, box, 512, 384)
    assert drafted.shape == full.shape == (3, 32, 32) and drafted.dtype == torch.uint8
    # the same region: red left, blue right (the seam blurs more at the draft's lower resolution)
    for cols in (slice(0, 10), slice(22, 32)):
        assert (drafted[:, :, cols].float() - full[:, :, cols].float()).abs().max() < 8
    assert drafted[0, :, :10].float().mean() > 240 and drafted[2, :, 22:].float().mean() > 240
