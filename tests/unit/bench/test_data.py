"""The throughput work: fast decode/crop path, the lean tar reader, `bench data` and `bench replicate` (CPU,
tiny shards); `bench train`: tests/unit/bench/test_train.py.

No test asserts a timing: speed is measured by `msa-dist bench`, not by tests.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from msa_dist.bench.data import run_data_bench
from msa_dist.bench.flops import FlopModel, image_forward_flops
from msa_dist.bench.replicate import replicate_shards
from msa_dist.bench.seed_loader import seed_style_samples_per_s
from msa_dist.cli import main
from msa_dist.config.schema import DataConfig, load_config
from msa_dist.data.loading.images import ImageCropper, center_crop_box, decode_rgb, jpeg_size, random_crop_box, stored_size
from msa_dist.data.loading.batching import IMAGENET_STD, Collate, SampleTransform
from msa_dist.data.loading.loader import StreamSpec, build_loader, iter_texts
from msa_dist.data.format.manifest import shard_urls
from msa_dist.data.shards import verify_shards
from msa_dist.data.format.tario import tar_samples
from msa_dist.engine.batch import model_inputs
from msa_dist.models.tokenizer import train_wordpiece_tokenizer
from run_utils import BENCH_TINY as TINY

ROOT = Path(__file__).resolve().parents[3]


def _jpeg(size: tuple[int, int], mode: str = "RGB", **save) -> bytes:
    image = Image.new(mode, size, 120 if mode == "L" else (200, 40, 90))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **save)
    return buf.getvalue()


@pytest.fixture
def tokenizer(shard_dir):
    return train_wordpiece_tokenizer(iter_texts(str(shard_dir), "train"), 120)


@pytest.mark.parametrize("mode, save", [("RGB", {}), ("RGB", {"progressive": True}), ("L", {}),
                                        ("RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 64})])
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
    full = decode_rgb(data, 341, 256)[:, box.top:box.top + 224, box.left:box.left + 224]
    assert torch.equal(out, full.flip(-1) if box.flip else full)  # a crop (and flip), no resampling
    assert ImageCropper(224, 256, train=True, train_crop="center").box(None, 341, 256) == \
        center_crop_box(341, 256, 256, 224)


def test_decoder_falls_back_for_jpegs_simplejpeg_rejects():
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(buf, format="JPEG")  # red, in CMYK
    image = decode_rgb(buf.getvalue(), 40, 30)
    assert image.shape == (3, 30, 40) and image[0].float().mean() > 200 and image[1].float().mean() < 60
    # drafted decodes shrink by powers of two and stay >= the size asked for
    data = _jpeg((400, 300), "RGB")
    assert decode_rgb(data, 400, 300, draft_size=70).shape == (3, 75, 100)
    assert decode_rgb(data, 400, 300, draft_size=160).shape == (3, 300, 400)


def test_collate_fast_path_matches_the_tokenizer_call(tokenizer):
    texts = ["a short one", "", "word " * 80, "Mixed CASE, punctuation!! and #tags @user"]
    for max_length, pad in ((8, False), (16, True), (128, False)):
        collate = Collate(tokenizer, max_length, pad)
        assert collate._backend is not None
        ids, mask = collate._encode(texts)
        ref = tokenizer(texts, padding=collate.padding, truncation=True, max_length=max_length, return_tensors="pt")
        assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
        assert ids.shape[1] == (max_length if pad or max_length == 8 else ref["input_ids"].shape[1])


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


def test_lean_tar_reader_matches_webdataset(shard_dir):
    urls = shard_urls(shard_dir, "train") + shard_urls(shard_dir, "val")
    expected = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    got = list(tar_samples(handler=lambda exc: False)([{"url": u} for u in urls]))
    assert got == expected and len(got) == 18


def test_lean_tar_reader_long_names_and_corrupt_shards(tmp_path):
    key = "k" * 120  # longer than ustar's 100-byte name field: a pax header carries it
    good = tmp_path / "good.tar"
    with wds.TarWriter(str(good), encoder=False) as writer:
        writer.write({"__key__": key, "txt": b"hello", "cls": b"1"})
        writer.write({"__key__": "short", "txt": b"x"})
    got = list(tar_samples(handler=lambda exc: False)([{"url": str(good)}]))
    assert [(s["__key__"], s["txt"]) for s in got] == [(key, b"hello"), ("short", b"x")]

    bad = tmp_path / "bad.tar"
    raw = bytearray(good.read_bytes())
    raw[148:156] = b"0000000\0"  # wrong checksum in the first header
    bad.write_bytes(bytes(raw))
    errors = []
    samples = list(tar_samples(handler=lambda exc: errors.append(exc) or True)([{"url": str(bad)}, {"url": str(good)}]))
    assert len(errors) == 1 and isinstance(errors[0], tarfile.ReadError)
    assert [s["__key__"] for s in samples] == [key, "short"]  # the next shard is still read
    with pytest.raises(tarfile.ReadError):
        list(tar_samples(handler=lambda exc: False)([{"url": str(bad)}]))


def test_augmentation_is_a_pure_function_of_seed_epoch_key(shard_dir):
    sample = next(iter(tar_samples(handler=lambda exc: False)([{"url": shard_urls(shard_dir, "train")[0]}])))
    cfg = DataConfig(image_size=24, resize_size=32)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    first = SampleTransform(cfg, True, seed=3, epoch=1)(sample)["image"]
    again = SampleTransform(cfg, True, seed=3, epoch=1)(dict(sample))["image"]
    assert torch.equal(first, again) and first.shape == (3, 24, 24) and first.dtype == torch.uint8
    # the global RNGs are not touched (workers=0 runs in the training process)
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    boxes = {SampleTransform(cfg, True, seed=3, epoch=e).cropper.box(
        random.Random(e), 48, 40) for e in range(6)}
    assert len(boxes) > 1


def test_collate_pads_to_longest_or_to_max_length(tokenizer):
    samples = [{"key": str(i), "text": "word " * (i + 1), "label": 0, "image": torch.zeros(3, 8, 8, dtype=torch.uint8)}
               for i in range(3)]
    longest = Collate(tokenizer, 16)(samples)
    fixed = Collate(tokenizer, 16, pad_to_max_length=True)(samples)
    assert longest["input_ids"].shape[1] < 16 and fixed["input_ids"].shape == (3, 16)
    assert torch.equal(fixed["attention_mask"].sum(1), longest["attention_mask"].sum(1))
    assert longest["images"].shape == (3, 3, 8, 8)
    # data.pad_to_multiple_of: lengths rounded up (fewer shapes), the same tokens; the Python path agrees
    rounded = Collate(tokenizer, 16, pad_to_multiple_of=8)(samples)
    assert rounded["input_ids"].shape[1] % 8 == 0 and rounded["input_ids"].shape[1] >= longest["input_ids"].shape[1]
    width = longest["input_ids"].shape[1]
    assert torch.equal(rounded["input_ids"][:, :width], longest["input_ids"]) and not rounded["attention_mask"][:, width:].any()
    slow = Collate(tokenizer, 16, pad_to_multiple_of=8)
    slow._backend = None
    assert torch.equal(slow._encode([s["text"] for s in samples])[0], rounded["input_ids"])


@pytest.mark.parametrize("train", [True, False])
def test_decode_on_device_gives_the_cpu_loaders_images(shard_dir, tokenizer, train):
    spec = StreamSpec("train", train, 4, seed=1, epoch=2)
    base = DataConfig(image_size=32, resize_size=40, workers=0)
    on_cpu = next(iter(build_loader(base, str(shard_dir), spec, tokenizer)))
    deferred = next(iter(build_loader(DataConfig(**{**base.__dict__, "decode_on_device": True}),
                                      str(shard_dir), spec, tokenizer)))
    assert "images" not in deferred and deferred["keys"] == on_cpu["keys"]
    a = model_inputs(on_cpu, torch.device("cpu"), "both")["images"]
    b = model_inputs(deferred, torch.device("cpu"), "both")["images"]
    assert a.shape == b.shape == (4, 3, 32, 32) and a.is_contiguous() and a.dtype == torch.float32
    # the same crops of the same pixels: only the JPEG decoders differ (simplejpeg's fast DCT on
    # the loader's side, torchvision's exact one here), by a few intensity levels at most
    levels = ((a - b) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).abs()
    assert levels.max() <= 8 and levels.mean() < 2.0
    other = ((a.roll(1, 0) - b) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).abs()
    assert other.mean() > 4 * levels.mean()  # another image would not pass


def test_image_flops_counts_resnet50():
    import torchvision
    assert image_forward_flops(torchvision.models.resnet50(), 224) == pytest.approx(8.18e9, rel=0.01)


def test_flop_model_counts_real_tokens_not_padding():
    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = torch.nn.Sequential(torch.nn.Embedding(50, 4), torch.nn.Linear(4, 4))
            self.head = torch.nn.Linear(4, 3)
            self.image_encoder = None
    model = FlopModel(Fake(), 32)
    assert model.text_params == 20 and model.head_params == 15
    assert model.batch_flops(samples=2, real_tokens=10) == 6 * 20 * 10 + 2 * 6 * 15


def test_bench_data_cli_prints_rate_last(shard_dir, raw_dataset, capsys, tmp_path):
    out = tmp_path / "data.json"
    code = main(["bench", "data", "--shards", str(shard_dir), "--seconds", "0.3", "--workers", "0",
                 "--json", str(out), *TINY])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    name, value = last.split()
    assert name == "samples_per_s_per_worker" and float(value) > 0
    result = json.loads(out.read_text())
    assert result["workers"] == 0 and result["image_size"] == 32 and result["samples"] > 0
    # each delivered sample's bytes once (the whole sample: its headers, image, text, label); with
    # workers=0 nothing is read ahead, so the mean over the samples read is near the split's mean
    assert 0.8 * result["mean_sample_bytes"] < result["bytes_read_per_sample"] < 1.2 * result["mean_sample_bytes"]


def test_bench_data_with_reference_and_workers(shard_dir, raw_dataset):
    cfg = load_config(None, [*TINY, f"data.shards={shard_dir}"])
    result = run_data_bench(cfg, seconds=0.3, workers=1, reference=str(raw_dataset.root))
    assert result["samples_per_s_per_worker"] > 0 and result["reference_samples_per_s"] > 0
    assert result["ratio_to_reference"] == pytest.approx(result["samples_per_s_per_worker"]
                                                         / result["reference_samples_per_s"])


def test_seed_style_reference_needs_a_data_root(tmp_path):
    from msa_dist.common.errors import MsaDistError
    with pytest.raises(MsaDistError, match="DATA_ROOT"):
        seed_style_samples_per_s(tmp_path, 0.1)


def test_seed_baseline_config_is_the_seed_setup():
    cfg = load_config(ROOT / "configs" / "seed_baseline.yaml")
    assert (cfg.backend.precision, cfg.data.max_length, cfg.data.pad_to_max_length, cfg.data.workers) == \
        ("fp32", 128, True, 0)
    fast = load_config(ROOT / "configs" / "gpu_fast.yaml")
    assert (fast.backend.precision, fast.data.max_length, fast.model.image.channels_last, fast.optim.fused) == \
        ("bf16", 64, True, True)


def test_replicate_shards(shard_dir, tmp_path):
    out = tmp_path / "big"
    manifest = replicate_shards(shard_dir, out, copies=3, shard_size=10)
    assert manifest["splits"]["train"]["samples"] == 36
    keys = manifest["splits"]["train"]["guids"]
    assert len(set(keys)) == 36 and keys[0].endswith("_r0")
    assert verify_shards(out)["samples"] == sum(info["samples"] for info in manifest["splits"].values())
