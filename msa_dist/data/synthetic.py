"""A small synthetic image-text set in the course layout, for `msa-dist demo` and tests.

Each class has its own image look (hue and a shape) and its own words, so sentiment can be
learnt from either modality; some pairs carry the signal in one modality only.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from msa_dist.common.labels import LABELS

_WORDS = {
    "positive": ["love", "great", "happy", "amazing", "wonderful", "beautiful", "best", "fun", "😊", "“awesome”"],
    "neutral": ["today", "meeting", "report", "schedule", "update", "weather", "train", "office", "news", "notes"],
    "negative": ["hate", "awful", "sad", "terrible", "worst", "angry", "broken", "ugly", "tired", "disaster…"],
}
_FILLER = ["the", "a", "this", "with", "at", "#mood", "@friend", "in", "my", "so", "just", "again", "we"]
_COLORS = {"positive": (230, 160, 40), "neutral": (120, 120, 130), "negative": (40, 70, 180)}


def _text(label: str, rng: random.Random, informative: bool) -> str:
    words = [rng.choice(_FILLER) for _ in range(rng.randint(4, 9))]
    pool = _WORDS[label] if informative else _FILLER
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    return " ".join(words)


def _image(label: str, rng: random.Random, informative: bool, size: int) -> Image.Image:
    base = _COLORS[label] if informative else _COLORS[rng.choice(LABELS)]
    jitter = [max(0, min(255, c + rng.randint(-40, 40))) for c in base]
    img = Image.new("RGB", (size, size), tuple(jitter))
    draw = ImageDraw.Draw(img)
    for _ in range(6):  # clutter shared by all classes
        x, y = rng.randrange(size), rng.randrange(size)
        draw.rectangle([x, y, x + size // 8, y + size // 8], fill=tuple(rng.randrange(256) for _ in range(3)))
    x, y, r = rng.randrange(size // 4, 3 * size // 4), rng.randrange(size // 4, 3 * size // 4), size // 5
    shape = label if informative else rng.choice(LABELS)
    if shape == "positive":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 240, 120))
    elif shape == "negative":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=(20, 20, 40))
    else:
        draw.rectangle([x - r, y - r // 3, x + r, y + r // 3], fill=(200, 200, 200))
    return img


def write_synthetic_dataset(
    root: str | Path, n_labelled: int = 600, n_test: int = 100, seed: int = 0, image_px: int = 96
) -> Path:
    """Write data/<guid>.jpg|txt, train.txt and test_without_label.txt under `root`."""
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    weights = [0.55, 0.15, 0.30]  # roughly the real data's imbalance
    rows = []
    for guid in range(1, n_labelled + n_test + 1):
        label = rng.choices(LABELS, weights)[0]
        # 70% of pairs carry the class in both modalities, 15% only in the text, 15% only in the image.
        mode = rng.random()
        text = _text(label, rng, informative=mode < 0.85)
        image = _image(label, rng, informative=mode < 0.70 or mode >= 0.85, size=image_px)
        (root / "data" / f"{guid}.txt").write_text(text + "\n", encoding="utf-8")
        image.save(root / "data" / f"{guid}.jpg", quality=90)
        rows.append((guid, label))
    labelled, test = rows[:n_labelled], rows[n_labelled:]
    (root / "train.txt").write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in labelled))
    (root / "test_without_label.txt").write_text("guid,tag\n" + "".join(f"{g},null\n" for g, _ in test))
    return root
