"""Issue 29: what a run dir (or a shard folder) from elsewhere may choose: train.init_from copies only the
source run's tokenizer files, a shard folder never holds the tokenizer cache, broken run files are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.checkpoint.files import copy_source_tokenizer


def _weights(run: Path) -> Path:
    step = run / "checkpoints" / "step-0000003"
    step.mkdir(parents=True)
    (step / "model.pt").write_bytes(b"weights")
    return step / "model.pt"


def _tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return folder


def test_init_from_copies_the_source_runs_tokenizer_files_only(tmp_path):
    tokenizer = _tokenizer(tmp_path / "src" / "tokenizer")
    (tokenizer / "notes.sh").write_text("echo hi")
    (tokenizer / "sub").mkdir()
    copy_source_tokenizer(str(_weights(tmp_path / "src")), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "tokenizer").iterdir()) == ["tokenizer_config.json", "vocab.txt"]


def test_init_from_takes_no_tokenizer_from_a_parent_of_the_run(tmp_path):
    _tokenizer(tmp_path / "tokenizer")  # e.g. in the home folder, above every run
    copy_source_tokenizer(str(_weights(tmp_path / "runs" / "src")), tmp_path / "run")
    assert not (tmp_path / "run" / "tokenizer").exists()


@pytest.mark.parametrize("which", ["vocab.txt", "folder"])
def test_init_from_refuses_a_link_in_the_source_tokenizer(tmp_path, which):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    if which == "folder":
        _tokenizer(tmp_path / "elsewhere")
        (tmp_path / "elsewhere" / "tokenizer.json").symlink_to(secret)
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "tokenizer").symlink_to(tmp_path / "elsewhere")
    else:
        tokenizer = _tokenizer(tmp_path / "src" / "tokenizer")
        (tokenizer / "vocab.txt").unlink()
        (tokenizer / "vocab.txt").symlink_to(secret)
    weights = _weights(tmp_path / "src")
    with pytest.raises(MsaDistError) as err:
        copy_source_tokenizer(str(weights), tmp_path / "run")
    assert "\n" not in str(err.value) and "symbolic link" in str(err.value)
    copied = [p.read_text() for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert "PRIVATE KEY" not in copied


def test_a_shard_folder_neither_picks_nor_holds_the_tiny_tokenizer(shard_dir, tmp_path, monkeypatch):
    from msa_dist.engine.run.artifacts import _shard_wordpiece

    monkeypatch.setenv("MSA_DIST_CACHE", str(tmp_path / "cache"))
    before = sorted(p.relative_to(shard_dir) for p in shard_dir.rglob("*"))
    honest = _shard_wordpiece(str(shard_dir), 60)
    assert sorted(p.relative_to(shard_dir) for p in shard_dir.rglob("*")) == before  # nothing written there
    # a shard folder from elsewhere ships a "cached" tokenizer that maps "terrible" to "great"
    vocab = honest.get_vocab()
    planted = tmp_path / "planted"
    honest.save_pretrained(str(planted))
    tokenizer_json = json.loads((planted / "tokenizer.json").read_text())
    tokenizer_json["model"]["vocab"]["terrible"] = tokenizer_json["model"]["vocab"]["great"] = vocab.get("great", 7)
    (planted / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    for name in [p.name for p in (tmp_path / "cache" / "tokenizers").iterdir()] + ["wordpiece-60-x"]:
        (shard_dir / "tokenizers").mkdir(exist_ok=True)
        target = shard_dir / "tokenizers" / name
        target.mkdir()
        for file in planted.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    again = _shard_wordpiece(str(shard_dir), 60)
    assert again("terrible")["input_ids"] == honest("terrible")["input_ids"]
    assert again.get_vocab() == vocab


BROKEN = [b"{not json", b"[1, 2]", b"\xff\xfe", b"", b'{"offsets": {"negative": "x"}, "data": 3}']


@pytest.mark.parametrize("content", BROKEN)
def test_a_broken_run_info_or_offsets_file_is_one_line_naming_it(tmp_path, content):
    from msa_dist.engine.run.provenance import read_run_info
    from msa_dist.inference.calibration import load_offsets

    for name, read in (("run_info.json", read_run_info), ("logit_offsets.json", load_offsets)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(MsaDistError) as err:
            read(tmp_path)
        assert "\n" not in str(err.value) and name in str(err.value)


@pytest.mark.parametrize("content", BROKEN)
def test_broken_val_metrics_are_a_reported_skip_in_export(tmp_path, content, caplog):
    from msa_dist.inference.export import _card, _val_metrics

    weights = _weights(tmp_path)
    (weights.parent / "metrics.json").write_bytes(content)
    (tmp_path / "metrics.jsonl").write_bytes(content + b'\n{"type": "eval", "accuracy": "high"}\n')
    metrics = _val_metrics(tmp_path, weights)
    assert metrics is not None or "metrics.json" in caplog.text  # a valid object is used, a broken file reported
    card = {
        "labels": ["a"],
        "model": {"modality": "both", "text": {"name": "t"}, "image": {"name": "i"}, "head": {"fusion": "concat"}},
    }
    assert "# msa-dist model" in _card(tmp_path, "best", metrics, card)


def test_links_in_place_of_run_json_files_are_not_followed(tmp_path):
    from msa_dist.engine.run.provenance import read_run_info

    secret = tmp_path / "elsewhere.json"
    secret.write_text(json.dumps({"data": {}, "git": {}}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").symlink_to(secret)
    with pytest.raises(MsaDistError) as err:
        read_run_info(run)
    assert "symbolic link" in str(err.value)


@pytest.mark.parametrize(
    "override",
    [
        "model.text.tiny_hidden=16384",
        "model.text.tiny_layers=64",
        "model.text.tiny_vocab_size=100000000",
        "model.head.hidden=1000000",
        "train.batch_size=100000000",
        "model.image.tiny_width=100000",
    ],
)
def test_config_numbers_that_size_a_model_or_batch_are_bounded(override):
    from msa_dist.config.schema import load_config

    with pytest.raises(MsaDistError) as err:
        load_config(None, ["model.text.name=tiny", "model.image.name=tiny", override])
    assert "\n" not in str(err.value) and override.split("=")[0] in str(err.value)


def test_a_latest_link_out_of_the_run_is_not_read(tmp_path):
    from msa_dist.engine.checkpoint.files import latest_checkpoint

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-OUTSIDE-THE-RUN")
    (tmp_path / "run" / "checkpoints" / "step-0000001").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").symlink_to(secret)
    with pytest.raises(MsaDistError) as err:
        latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert "SECRET" not in str(err.value) and "symbolic link" in str(err.value)
