"""Images for the loader: JPEG bytes -> a crop box -> a uint8 [3, S, S] tensor.

The crop (for training, `data.train_crop`: a random resized or random crop + flip; for evaluation,
resize + center crop) is chosen from the image's stored size alone, read from the JPEG header, with
a `random.Random` seeded per sample. So a sample's crop is a pure function of (seed, epoch, key,
image) whichever decoder runs: libjpeg-turbo through simplejpeg (fast DCT; at a reduced DCT scale
when the stored image is at least twice the size needed), torchvision or PIL for files simplejpeg
rejects, or nvJPEG on the GPU (`data.decode_on_device`, see engine/batch.py).
Cropping before resizing, on uint8 tensors, keeps the per-sample work to one decode and one small
resize (torch's native uint8 antialiased kernel).
"""

from __future__ import annotations

import io
import math
import random
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
import torchvision.io as tvio
from PIL import Image

from msa_dist.common.limits import check_pixels

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec and warns on every call;
# decode_jpeg (CPU and nvJPEG) still works, and decode_rgb falls back to PIL once it is gone.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)
_decode_jpeg = getattr(tvio, "decode_jpeg", None)

TRAIN_SCALE = (0.5, 1.0)  # random resized crop: fraction of the image area kept
TRAIN_RATIO = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range of the crop
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT/JPG/DAC)


@dataclass(frozen=True)
class CropBox:
    """A crop in stored-image pixels, then resized to the output size (and mirrored if `flip`)."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.height, self.width, int(self.flip)]


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header; None when `data` is not a JPEG we can parse."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _SOF_MARKERS:
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def stored_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image: the JPEG header, else whatever PIL reads; ValueError
    over MAX_IMAGE_PIXELS (common/limits.py)."""
    size = jpeg_size(data)
    if size is None:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
    check_pixels(*size)  # before any decode or buffer sized from it
    return size


def random_resized_crop_box(rng: random.Random, width: int, height: int) -> CropBox:
    """torchvision's RandomResizedCrop.get_params plus a flip, drawn from `rng`."""
    area = width * height
    log_ratio = (math.log(TRAIN_RATIO[0]), math.log(TRAIN_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*TRAIN_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return CropBox(top, left, h, w, rng.random() < 0.5)
    # Fallback (extreme aspect ratios): the largest centered crop within the ratio range.
    in_ratio = width / height
    if in_ratio < TRAIN_RATIO[0]:
        w, h = width, round(width / TRAIN_RATIO[0])
    elif in_ratio > TRAIN_RATIO[1]:
        w, h = round(height * TRAIN_RATIO[1]), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w, rng.random() < 0.5)


def center_crop_box(width: int, height: int, resize_size: int, image_size: int) -> CropBox:
    """Resize(resize_size) + CenterCrop(image_size), as one box in stored pixels (clamped to the image)."""
    w, h = _crop_side(width, height, resize_size, image_size)
    return CropBox(round((height - h) / 2), round((width - w) / 2), h, w)


def random_crop_box(rng: random.Random, width: int, height: int, resize_size: int, image_size: int) -> CropBox:
    """Resize(resize_size) + RandomCrop(image_size) + a flip, as one box in stored pixels. On shards
    stored at resize_size the box is image_size square: a crop and no resize."""
    w, h = _crop_side(width, height, resize_size, image_size)
    return CropBox(rng.randint(0, height - h), rng.randint(0, width - w), h, w, rng.random() < 0.5)


def _crop_side(width: int, height: int, resize_size: int, image_size: int) -> tuple[int, int]:
    side = image_size * min(width, height) / resize_size
    return min(width, max(1, round(side))), min(height, max(1, round(side)))


class ImageCropper:
    """Chooses a sample's crop box and applies it: decode (draft when it pays), crop, resize, flip."""

    def __init__(
        self, image_size: int, resize_size: int, train: bool, draft: bool = True, train_crop: str = "random_resized"
    ):
        self.image_size, self.resize_size = image_size, resize_size
        self.crop = train_crop if train else "center"
        self.draft_size = resize_size if draft else 0
        self._buffer = np.empty(0, dtype=np.uint8)

    def box(self, rng: random.Random | None, width: int, height: int) -> CropBox:
        """The crop for an image of the stored size; `rng` (training only) is the sample's own."""
        if self.crop == "random_resized":
            return random_resized_crop_box(rng, width, height)
        if self.crop == "random":
            return random_crop_box(rng, width, height, self.resize_size, self.image_size)
        return center_crop_box(width, height, self.resize_size, self.image_size)

    def __call__(
        self, data: bytes, box: CropBox, width: int, height: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decode `data` (stored size width x height) and write the box, resized and mirrored as it
        says, into `out` (uint8 [S, S, 3], e.g. a slot of the batch; allocated when None).
        Returns `out` as [3, S, S]. Not thread-safe: JPEGs are decoded into one reused buffer."""
        size = self.image_size
        if out is None:
            out = torch.empty(size, size, 3, dtype=torch.uint8)
        if len(self._buffer) < width * height * 3:  # the stored size bounds any reduced-scale decode
            self._buffer = np.empty(width * height * 3, dtype=np.uint8)
        image = decode_rgb(data, width, height, self.draft_size, buffer=self._buffer).permute(1, 2, 0)  # HWC
        # A draft decode is smaller than stored: scale the box (chosen on the stored size) to it.
        sy, sx = image.shape[0] / height, image.shape[1] / width
        top, left = int(box.top * sy), int(box.left * sx)
        crop = image[top : top + max(1, round(box.height * sy)), left : left + max(1, round(box.width * sx))]
        if crop.shape[:2] != (size, size):
            # One dense HWC copy of the crop (mirrored by the same copy: mirroring before the resize
            # equals mirroring after it), then the resize. [1, 3, h, w] in channels_last memory:
            # unsqueezing before the permute keeps the batch stride dense, so torch sees
            # channels_last and runs its vectorised uint8 kernel; a [3, h, w] view unsqueezed after
            # the permute is taken as NCHW, resized about 50% slower and returned CHW.
            crop = crop.flip(1) if box.flip else crop.contiguous()
            crop = resize_crop(crop[None].permute(0, 3, 1, 2), size)[0].permute(1, 2, 0)
        elif box.flip:
            crop = crop.flip(1)
        out.copy_(crop)  # also takes the crop out of the decode buffer, which the next image reuses
        return out.permute(2, 0, 1)


def resize_crop(crop: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, h, w] -> [N, 3, size, size], bilinear with antialiasing (uint8 stays uint8 on the CPU)."""
    if tuple(crop.shape[-2:]) == (size, size):
        return crop
    if crop.dtype == torch.uint8 and crop.device.type != "cpu":
        # no uint8 antialiased kernel on GPUs: interpolate in float, round back
        out = F.interpolate(crop.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def decode_rgb(
    data: bytes, width: int, height: int, draft_size: int = 0, buffer: np.ndarray | None = None
) -> torch.Tensor:
    """uint8 [3, H, W] (HWC memory). JPEGs: simplejpeg with the fast DCT and upsampling (about 25%
    faster than torchvision's decoder here), at 1/2, 1/4 or 1/8 scale while both sides stay >=
    draft_size. Anything simplejpeg rejects (CMYK, progressive oddities, PNG...) goes to
    torchvision, then PIL, which raise clear errors for files nothing can read. simplejpeg decodes
    into `buffer` when it is given (the result is then a view of it)."""
    if data[:2] == b"\xff\xd8":
        scale = 1
        if draft_size:
            while scale < 8 and min(width, height) >= 2 * scale * draft_size:
                scale *= 2
        try:
            # libjpeg-turbo picks the smallest n/8 scale that keeps these sizes: exactly 1/scale
            image = simplejpeg.decode_jpeg(
                data,
                colorspace="RGB",
                fastdct=True,
                fastupsample=True,
                min_height=-(-height // scale) if scale > 1 else 0,
                min_width=-(-width // scale) if scale > 1 else 0,
                buffer=buffer,
            )
            return torch.from_numpy(image).permute(2, 0, 1)
        except ValueError:
            pass
        if _decode_jpeg is not None and scale == 1:
            try:
                return _decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=tvio.ImageReadMode.RGB)
            except RuntimeError:
                pass  # a JPEG torchvision rejects: let PIL try (and raise a clear error if it cannot)
    img = Image.open(io.BytesIO(data))
    if draft_size and img.format == "JPEG":
        # Decode at a reduced DCT scale, still >= draft_size on both sides.
        img.draft("RGB", (draft_size, draft_size))
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def as_jpeg(data: bytes) -> bytes:
    """`data` itself if it is a JPEG, else the image re-encoded as one (for decoding on the GPU)."""
    if data[:2] == b"\xff\xd8":
        return data
    with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()
