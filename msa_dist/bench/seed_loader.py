"""The reference: a loader in the seed's style, timed on the same machine in the same command.

One loose .jpg/.txt pair per sample read from DATA_ROOT/data, GB18030 text, a WordPiece tokenizer
padded to 128 tokens, and PIL Resize(224) / CenterCrop(224) / ToTensor / Normalize per sample, on
one core, as /shared/bench/seed_style_loader.py does (the seed report's pipeline).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from msa_dist.common.errors import MsaDistError
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


def seed_style_samples_per_s(data_root: str | Path, seconds: float) -> float:
    """Samples per second of the seed-style loop over DATA_ROOT's train.txt pairs, on one core."""
    root = Path(data_root)
    data_dir, labels = root / "data", root / "train.txt"
    if not labels.is_file() or not data_dir.is_dir():
        raise MsaDistError(f"--reference {root}: expected a course-layout DATA_ROOT (train.txt and data/)")
    with open(labels, newline="") as f:
        guids = [row[0] for row in list(csv.reader(f))[1:] if row]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        texts = [_read_text(data_dir, g) for g in guids[:2000]]
        tokenizer = train_wordpiece_tokenizer(texts, 8000)
        image_tf = transforms.Compose(
            [
                transforms.Resize(224),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for guid in guids:
                tokenizer(
                    _read_text(data_dir, guid),
                    max_length=128,
                    padding="max_length",
                    truncation=True,
                    return_tensors="pt",
                )
                image_tf(Image.open(data_dir / f"{guid}.jpg").convert("RGB"))
                n += 1
                if time.perf_counter() - start >= seconds:
                    break
        return n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def _read_text(data_dir: Path, guid: str) -> str:
    return (data_dir / f"{guid}.txt").read_bytes().decode("gb18030", "replace")
