"""`msa-dist export` + `msa_dist.load_model`: the exported model gives the run's logits in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from run_utils import tiny_config

import msa_dist
from msa_dist.cli import main
from msa_dist.common.labels import LABELS
from msa_dist.engine.trainer import train


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["both", "text"])
def test_export_round_trip_in_fresh_process(shard_dir, raw_dataset, tmp_path, modality, capsys):
    run, out = tmp_path / "run", tmp_path / "exported"
    train(tiny_config(shard_dir, "train.epochs=1", f"model.modality={modality}"), run)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.yaml", "tokenizer", "README.md"}
    card = yaml.safe_load((out / "config.yaml").read_text())
    assert card["labels"] == list(LABELS) and card["model"]["modality"] == modality
    assert "| macro_f1 |" in (out / "README.md").read_text()

    guids = raw_dataset.test
    images = [(raw_dataset.data_dir / f"{g}.jpg").read_bytes() for g in guids]
    texts = [raw_dataset.texts[g] for g in guids]
    from_run = msa_dist.load_model(run)
    batch = from_run.preprocess(images, texts)
    torch.save({"batch": batch, "logits": from_run.logits(batch)}, tmp_path / "batch.pt")
    run.rename(tmp_path / "gone")  # the fresh process must not need the run dir (nor the shards)
    shard_dir.rename(tmp_path / "shards-gone")
    image = raw_dataset.data_dir / f"{guids[0]}.jpg"
    script = textwrap.dedent(f"""
        import torch, msa_dist
        saved = torch.load({str(tmp_path / "batch.pt")!r})
        model = msa_dist.load_model({str(out)!r})
        diff = (model.logits(saved["batch"]) - saved["logits"]).abs().max().item()
        assert diff <= 1e-6, diff
        probs = model.predict({str(image)!r}, {texts[0]!r})
        assert sorted(probs) == sorted({list(LABELS)!r}) and abs(sum(probs.values()) - 1) < 1e-5
        print("max abs logit difference", diff)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max abs logit difference" in done.stdout


def test_exported_folder_predicts_raw_pairs_like_the_run(shard_dir, raw_dataset, tmp_path):
    run, out = tmp_path / "run", tmp_path / "exported"
    train(tiny_config(shard_dir, "train.epochs=1"), run)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["predict", "--run", str(run), "--data", str(raw_dataset.root), "--out", str(a)]) == 0
    assert main(["predict", "--run", str(out), "--data", str(raw_dataset.root), "--out", str(b)]) == 0
    assert a.read_text() == b.read_text()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2  # not over an existing export
    assert main(["predict", "--run", str(out), "--out", str(tmp_path / "c.csv")]) == 2  # no shards for an export


BROKEN_CARDS = {  # what config.yaml holds -> a piece of the one-line error
    b"model: [unclosed\n": "is not readable YAML",
    "model: {modality: b\xf6th}\n".encode("latin-1"): "is not readable YAML",
    b"- a list\n": "lacks the model and preprocessing sections",
    b"model: {modality: both}\n": "lacks the model and preprocessing sections",
}


def test_a_broken_exported_folder_or_run_config_is_one_line(shard_dir, raw_dataset, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "exported"
    train(tiny_config(shard_dir, "train.epochs=1"), run)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    card = yaml.safe_load((out / "config.yaml").read_text())
    cases = dict(BROKEN_CARDS)
    cases[yaml.safe_dump({**card, "model": {**card["model"], "modality": "audio"}}).encode()] = "model.modality=audio"
    cases[yaml.safe_dump({**card, "preprocessing": {**card["preprocessing"], "crop": 3}}).encode()] = "preprocessing"
    cases[yaml.safe_dump({**card, "preprocessing": {**card["preprocessing"], "image_size": "big"}}).encode()] = "sizes"
    cases[yaml.safe_dump({**card, "logit_offsets": [1, 2]}).encode()] = "logit_offsets must be 3 numbers"
    image = raw_dataset.data_dir / f"{raw_dataset.test[0]}.jpg"
    predict = ["predict", "--image", str(image), "--text", "hi", "--out", str(tmp_path / "p.csv")]
    good = (out / "config.yaml").read_bytes()
    capsys.readouterr()
    for text, why in cases.items():
        (out / "config.yaml").write_bytes(text)
        with pytest.raises(msa_dist.common.errors.MsaDistError, match=why):
            msa_dist.load_model(out)
        assert main([*predict, "--run", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("msa-dist: error: ") and err.count("\n") == 1, err
    (out / "config.yaml").write_bytes(good)
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(msa_dist.common.errors.MsaDistError, match="does not load into the model"):
        msa_dist.load_model(out)
    # a run dir's own config.yaml, broken
    (run / "config.yaml").write_bytes(b"optim: {lr: [unclosed\n")
    assert main([*predict, "--run", str(run)]) == 2
    assert "config.yaml is not readable YAML" in capsys.readouterr().err
