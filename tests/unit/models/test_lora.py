"""LoRA adapters on both towers (model.*.lora, models/lora.py with peft), on the real MiniLM and
EfficientNet-Lite0 weights: what trains, what a step changes, merging for export, one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.models import build_model
from msa_dist.models.lora import has_lora, merge_lora

PRETRAINED = [
    "model.text.name=minilm-l6",
    "model.text.pooling=mean",
    "model.image.name=efficientnet-lite0",
    "model.head.proj_dim=32",
    "model.head.hidden=32",
]
LORA = ["model.text.lora.r=8", "model.image.lora.r=4", "model.image.lora.alpha=8"]


def _model(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_config(None, [*PRETRAINED, *overrides]).model, vocab_size=0)


def _adapter_size(module: nn.Module, r: int) -> int:
    """LoRA's A (r x in) and B (out x r) of a linear layer or a 1x1 conv."""
    if isinstance(module, nn.Linear):
        return r * (module.in_features + module.out_features)
    assert isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
    return r * (module.in_channels + module.out_channels)


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 20000, (3, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return ids, mask, torch.randn(3, 3, 64, 64, generator=generator)


def test_only_the_adapters_and_the_head_train_with_the_expected_counts():
    plain, adapted = _model(), _model(*LORA)
    plain_modules = dict(plain.named_modules())
    expected = {"text": 0, "image": 0}
    for part, prefix, names, r in (
        ("text", "text_encoder.model.", ("query", "value"), 8),
        ("image", "image_encoder.backbone.", ("conv_pw", "conv_pwl", "conv_head"), 4),
    ):
        for name, module in plain_modules.items():
            if name.startswith(prefix) and name.rsplit(".", 1)[-1] in names:
                expected[part] += _adapter_size(module, r)
    groups = adapted.parameter_groups()
    counts = {part: sum(p.numel() for p in groups[part]) for part in ("text", "image", "head")}
    # MiniLM: 6 layers x (query + value) x 8 x (384 + 384)
    assert counts["text"] == expected["text"] == 6 * 2 * 8 * 768
    assert counts["image"] == expected["image"] > 0
    assert counts["head"] == sum(p.numel() for p in plain.head.parameters())
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert all("lora_" in name or name.startswith("head.") for name in trainable)
    # the backbones' own weights are all still there, frozen, beside the adapters
    frozen = sum(p.numel() for p in adapted.parameters() if not p.requires_grad)
    assert frozen == sum(p.numel() for n, p in plain.named_parameters() if not n.startswith("head.")) > 25_000_000


@pytest.mark.slow
def test_a_step_changes_only_the_adapters_and_the_head():
    model = _model(*LORA, "model.text.lora.dropout=0.1")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = model.parameter_groups()
    optimizer = torch.optim.AdamW([p for params in groups.values() for p in params], lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(2):  # lora_B starts at zero, so lora_A first gets a gradient on the second step
        loss = model(*_batch()).logsumexp(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name or name.startswith("head.") for name in changed)
    assert any("text_encoder" in n and "lora_A" in n for n in changed)
    assert any("image_encoder" in n and "lora_B" in n for n in changed)
    assert any(n.startswith("head.") for n in changed)


def test_merging_gives_the_adapter_model_s_outputs_and_a_plain_model():
    model = _model(*LORA).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # trained adapters are not zero
                param.normal_(std=0.02)
        adapted = model(*_batch())
    plain_keys = set(_model().state_dict())
    assert has_lora(model) and set(model.state_dict()) != plain_keys
    merge_lora(model)
    assert not has_lora(model) and set(model.state_dict()) == plain_keys
    with torch.no_grad():
        merged = model(*_batch())
    assert (adapted - _model().eval()(*_batch())).abs().max() > 1e-3  # the adapters do change the outputs
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_a_bad_target_name_is_one_line():
    with pytest.raises(MsaDistError) as err:
        _model("model.text.lora.r=4", "model.text.lora.targets=[query,no_such_layer]")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.text.lora.targets=query,no_such_layer:")
    assert "no module named 'no_such_layer' in bert" in message


def test_an_architecture_without_defaults_asks_for_targets():
    with pytest.raises(MsaDistError, match=r"^model.image.lora.targets: no default LoRA targets for TinyCNN"):
        build_model(
            load_config(
                None,
                ["model.modality=image", "model.image.name=tiny", "model.image.weights=none", "model.image.lora.r=4"],
            ).model,
            50,
        )


TINY_LORA = [
    "model.text.lora.r=4",
    "model.image.lora.r=2",
    "model.image.lora.targets=[features.2.0,features.3.0]",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=10",
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A finished 2-epoch tiny run (6 steps) with LoRA on both towers, a checkpoint every 2 steps."""
    from raw_data import make_raw_dataset
    from run_utils import tiny_config

    from msa_dist.data.shards import build_shards
    from msa_dist.engine.trainer import train

    root = tmp_path_factory.mktemp("lora-run")
    build_shards(make_raw_dataset(root / "raw").root, root / "shards", val_fraction=1 / 3, seed=0, shard_size=4)
    train(tiny_config(root / "shards", *TINY_LORA), root / "run")
    return root / "shards", root / "run"


def test_a_lora_run_resumed_mid_epoch_ends_with_the_same_weights(lora_run, tmp_path):
    import shutil

    from dist_utils import final_weights
    from run_utils import tiny_config

    from msa_dist.engine.trainer import train

    shards, run = lora_run
    saved = torch.load(run / "checkpoints" / "step-0000002" / "model.pt", weights_only=True)
    assert any("lora_A" in key for key in saved)  # the checkpoint holds the adapters (and the frozen base)
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    for step in resumed.glob("checkpoints/step-*"):
        if step.name != "step-0000002":  # step 2 of 3 in the first epoch
            shutil.rmtree(step)
    (resumed / "checkpoints" / "latest").write_text("step-0000002")
    train(tiny_config(shards, *TINY_LORA), resumed, resume="auto")
    expected, got = final_weights(run), final_weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


@pytest.mark.slow
def test_an_exported_lora_run_loads_without_peft_and_gives_the_run_s_logits(lora_run, tmp_path):
    import subprocess
    import sys
    import textwrap

    import yaml

    import msa_dist
    from msa_dist.cli import main

    _, run = lora_run
    out = tmp_path / "exported"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    card = yaml.safe_load((out / "config.yaml").read_text())
    assert card["model"]["text"]["lora"]["r"] == 0 and card["merged_lora"]["text"]["r"] == 4
    predictor = msa_dist.load_model(run)
    assert has_lora(predictor.model)
    ids = torch.randint(5, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "images": torch.full((3, 3, 32, 32), 128, dtype=torch.uint8),
    }
    torch.save({"batch": batch, "logits": predictor.logits(batch)}, tmp_path / "batch.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["peft"] = None  # any import of peft fails
        import torch, msa_dist
        saved = torch.load({str(tmp_path / "batch.pt")!r})
        model = msa_dist.load_model({str(out)!r})
        diff = (model.logits(saved["batch"]) - saved["logits"]).abs().max().item()
        assert diff <= 1e-5, diff
        assert "peft" not in {{name.split(".")[0] for name in sys.modules if sys.modules[name] is not None}}
        print("max abs logit difference", diff)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max abs logit difference" in done.stdout


def test_default_targets_on_a_timm_vit_and_a_clip_vision_tower(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32)
    CLIPVisionModel(CLIPVisionConfig(patch_size=16, **tiny)).save_pretrained(tmp_path / "clip")
    for name, adapted in (("timm:vit_tiny_patch16_224", ("qkv",)), (f"clip:{tmp_path / 'clip'}", ("q_proj", "v_proj"))):
        cfg = load_config(None, ["model.modality=image", f"model.image.name={name}", "model.image.weights=none"])
        cfg.model.image.lora.r = 2
        model = build_model(cfg.model, 0)
        trainable = {n for n, p in model.image_encoder.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(adapted)
