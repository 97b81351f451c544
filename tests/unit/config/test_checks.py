"""Every value check of the config (msa_dist/config/checks.py): each constrained key with a bad value
fails in one line naming the dotted key, when the config is loaded, before anything is built."""

from __future__ import annotations

import pytest
import torch.distributed
import yaml

from msa_dist.cli import main
from msa_dist.common.errors import MsaDistError
from msa_dist.config.checks import CHECKS, MIN_TINY_VOCAB
from msa_dist.config.model_section import TextEncoderConfig
from msa_dist.config.schema import Config, load_config, set_dotted, validate

# check id -> (overrides that break only that check, a piece of the message that says why)
CASES = {
    "data.image_size": (["data.image_size=0"], "must be >= 1"),
    "data.resize_size": (["data.resize_size=-224"], "must be >= 1"),
    "data.max_length": (["data.max_length=0"], "must be >= 1"),
    "data.pad_to_multiple_of": (["data.pad_to_multiple_of=0"], "must be >= 1"),
    "data.pad_to_multiple_of[divides]": (
        ["data.max_length=50", "data.pad_to_multiple_of=16"],
        "must divide data.max_length=50",
    ),
    "data.workers": (["data.workers=-1"], "must be >= 0"),
    "data.chunk_samples": (["data.chunk_samples=0"], "must be >= 1"),
    "data.read_mode": (["data.read_mode=shards"], "must be one of auto, chunks, blocks"),
    "data.blocks_above_shards": (["data.blocks_above_shards=-1"], "must be >= 0"),
    "data.block_bytes": (["data.block_bytes=0"], "must be >= 1"),
    "data.shuffle_buffer_samples": (["data.shuffle_buffer_samples=0"], "must be >= 1"),
    "data.canonical_partitions": (["data.canonical_partitions=-1"], "must be >= 0"),
    "data.block_read_ahead": (["data.block_read_ahead=0"], "must be >= 1"),
    "data.train_crop": (["data.train_crop=random_sized"], "one of random, random_resized, center"),
    "model.modality": (["model.modality=audio"], "one of both, text, image"),
    "model.head.fusion[modality]": (
        ["model.head.fusion=gated", "model.modality=text"],
        "does not work with model.modality=text",
    ),
    "model.text.pooling": (["model.text.pooling=max"], "one of cls, mean, last"),
    **{
        case: value
        for tower in ("text", "image")
        for case, value in {
            f"model.{tower}.lora.r": ([f"model.{tower}.lora.r=-1"], "must be >= 0 and <= 4096"),
            f"model.{tower}.lora.r[what_trains]": (
                [f"model.{tower}.lora.r=4", f"model.{tower}.unfreeze_last_n_layers=2"],
                f"leave model.{tower}.unfreeze_last_n_layers=-1",
            ),
            f"model.{tower}.lora.alpha": ([f"model.{tower}.lora.alpha=0"], "must be > 0"),
            f"model.{tower}.lora.dropout": ([f"model.{tower}.lora.dropout=1"], "must be in [0, 1)"),
            f"model.{tower}.lora.targets": ([f"model.{tower}.lora.targets=[a/b]"], "must be module names"),
        }.items()
    },
    "model.text.pooling[bow]": (
        ["model.text.name=tiny", "model.text.tiny_arch=bow", "model.text.pooling=cls"],
        "tiny_arch=bow needs model.text.pooling=mean",
    ),
    "model.text.tiny_arch": (["model.text.tiny_arch=lstm"], "one of bert, bow"),
    "model.text.tiny_hidden": (["model.text.tiny_hidden=0"], "must be >= 1"),
    "model.text.tiny_layers": (["model.text.tiny_layers=0"], "must be >= 1"),
    "model.text.tiny_heads": (["model.text.tiny_heads=0"], "must be >= 1"),
    "model.text.tiny_heads[divides]": (
        ["model.text.name=tiny", "model.text.tiny_heads=3"],
        "must divide model.text.tiny_hidden=128",
    ),
    "model.text.tiny_vocab_size": (["model.text.tiny_vocab_size=5"], f"must be >= {MIN_TINY_VOCAB}"),
    "model.text.tiny_bigram_buckets": (["model.text.tiny_bigram_buckets=-1"], "must be >= 0"),
    "model.text.tiny_char_buckets": (["model.text.tiny_char_buckets=-1"], "must be >= 0"),
    "model.text.tiny_token_dropout": (["model.text.tiny_token_dropout=1.0"], "must be in [0, 1)"),
    "model.text.tiny_dropout": (["model.text.tiny_dropout=-0.1"], "must be in [0, 1)"),
    "model.text.tiny_init_std": (["model.text.tiny_init_std=0"], "must be > 0"),
    "model.text.tiny_idf": (
        ["model.text.tiny_arch=bert", "model.text.tiny_idf=true"],
        "needs model.text.name=tiny and model.text.tiny_arch=bow",
    ),
    "model.text.unfreeze_last_n_layers": (["model.text.unfreeze_last_n_layers=-2"], "must be >= -1"),
    "model.text.layer_decay": (["model.text.layer_decay=0"], "must be in (0, 1]"),
    "model.image.tiny_width": (["model.image.tiny_width=0"], "must be >= 1"),
    "model.image.unfreeze_last_n_layers": (["model.image.unfreeze_last_n_layers=-3"], "must be >= -1"),
    "model.image.layer_decay": (["model.image.layer_decay=1.5"], "must be in (0, 1]"),
    "model.bow.hidden": (["model.bow.hidden=4096"], "must be >= 0 and <= 2048"),
    "model.bow.bigram_buckets": (["model.bow.bigram_buckets=-1"], "must be >= 0"),
    "model.bow.char_buckets": (["model.bow.char_buckets=-1"], "must be >= 0"),
    "model.bow.token_dropout": (["model.bow.token_dropout=1"], "must be in [0, 1)"),
    "model.bow.init_std": (["model.bow.init_std=0"], "must be > 0"),
    "model.bow.hidden[modality]": (["model.bow.hidden=8", "model.modality=image"], "needs model.modality=both or text"),
    "model.bow.hidden[fusion]": (
        ["model.bow.hidden=8", "model.head.fusion=cross_attention"],
        "not with model.head.fusion=cross_attention",
    ),
    "model.head.fusion": (["model.head.fusion=magic"], "one of concat, gated, cross_attention, late"),
    "model.head.proj_dim": (["model.head.proj_dim=0"], "must be >= 1"),
    "model.head.hidden": (["model.head.hidden=0"], "must be >= 1"),
    "model.head.layers": (["model.head.layers=-1"], "must be >= 0"),
    "model.head.dropout": (["model.head.dropout=1"], "must be in [0, 1)"),
    "model.head.modality_dropout": (["model.head.modality_dropout=-0.5"], "must be in [0, 1)"),
    "model.head.attn_layers": (["model.head.attn_layers=0"], "must be >= 1"),
    "model.head.attn_heads": (["model.head.attn_heads=0"], "must be >= 1"),
    "model.head.attn_heads[divides]": (
        ["model.head.fusion=cross_attention", "model.head.attn_heads=7"],
        "must divide model.head.proj_dim=256",
    ),
    "model.head.late_text_linear": (["model.head.late_text_linear=true"], "needs model.head.fusion=late"),
    "data.read_threads": (["data.read_threads=0"], "must be >= 1"),
    "data.read_ahead_batches": (["data.read_ahead_batches=0"], "must be >= 1"),
    "data.read_gap_bytes": (["data.read_gap_bytes=-1"], "must be >= 0"),
    "data.length_bucket_batches": (["data.length_bucket_batches=-8"], "must be >= 0"),
    "data.length_bucket_batches[padding]": (
        ["data.pad_to_max_length=true", "data.length_bucket_batches=8"],
        "no effect with data.pad_to_max_length=true",
    ),
    "optim.lr": (["optim.lr=-1"], "must be >= 0"),
    "optim.text_lr": (["optim.text_lr=-1e-5"], "must be >= 0"),
    "optim.image_lr": (["optim.image_lr=-1"], "must be >= 0"),
    "optim.bow_lr": (["optim.bow_lr=-1"], "must be >= 0"),
    "optim.weight_decay": (["optim.weight_decay=-0.1"], "must be >= 0"),
    "optim.betas": (["optim.betas=[0.9]"], "two numbers in [0, 1)"),
    "optim.warmup_steps": (["optim.warmup_steps=-1"], "must be >= 0"),
    "optim.schedule": (["optim.schedule=step"], "one of cosine, linear, constant"),
    "optim.min_lr_ratio": (["optim.min_lr_ratio=1.5"], "must be in [0, 1]"),
    "optim.grad_clip": (["optim.grad_clip=-1"], "must be >= 0"),
    "train.epochs": (["train.epochs=0"], "must be >= 1"),
    "train.batch_size": (["train.batch_size=0"], "must be >= 1"),
    "train.grad_accum_steps": (["train.grad_accum_steps=0"], "must be >= 1"),
    "train.seed": (["train.seed=100000000000000000000000"], "must be in [0, 2**63)"),
    "train.global_batch_size": (["train.global_batch_size=-64"], "must be >= 0"),
    "train.global_batch_size[multiple]": (["train.global_batch_size=48"], "multiple of train.batch_size=32"),
    "train.class_weight_power": (["train.class_weight_power=-1"], "must be >= 0"),
    "train.label_smoothing": (["train.label_smoothing=1.0"], "must be in [0, 1)"),
    "train.loss": (["train.loss=mse"], "one of ce, focal"),
    "train.focal_gamma": (["train.focal_gamma=-2"], "must be >= 0"),
    "train.eval_every_epochs": (["train.eval_every_epochs=0"], "must be >= 1"),
    "train.max_steps_per_epoch": (["train.max_steps_per_epoch=-1"], "must be >= 0"),
    "train.best_metric": (["train.best_metric=loss"], "one of accuracy, macro_f1, weighted_f1"),
    "train.max_nonfinite_steps": (["train.max_nonfinite_steps=0"], "must be >= 1"),
    "train.early_stop.patience": (["train.early_stop.patience=-1"], "must be >= 0"),
    "train.early_stop.metric": (["train.early_stop.metric=neutral_f1"], "must be one of"),
    "train.early_stop.min_delta": (["train.early_stop.min_delta=-0.1"], "must be >= 0"),
    "train.ema_decay": (["train.ema_decay=1.0"], "must be in [0, 1)"),
    "train.ema_decay[deepspeed]": (
        ["backend.name=deepspeed", "train.ema_decay=0.99"],
        "not supported with backend.name=deepspeed",
    ),
    "train.mixup_alpha": (["train.mixup_alpha=-1"], "must be >= 0"),
    "train.distill_weight": (["train.distill_weight=1.5"], "must be in [0, 1]"),
    "train.distill_temperature": (["train.distill_temperature=0"], "must be in (0, 100]"),
    "train.mixup_alpha[fusion]": (
        ["model.head.fusion=cross_attention", "train.mixup_alpha=0.2"],
        "not with model.head.fusion=cross_attention",
    ),
    "backend.name": (["backend.name=horovod"], "one of single, ddp, deepspeed, fsdp"),
    "backend.precision": (["backend.precision=fp8"], "one of fp32, bf16, fp16"),
    "backend.precision[fsdp]": (["backend.name=fsdp", "backend.precision=fp16"], "use backend.precision=bf16 or fp32"),
    "backend.zero_stage": (["backend.zero_stage=4"], "one of 0, 1, 2, 3"),
    "backend.device": (["backend.device=tpu"], "one of auto, cpu, cuda"),
    "backend.ddp_bucket_mb": (["backend.ddp_bucket_mb=0"], "must be >= 1"),
    "backend.timeout_s": (["backend.timeout_s=0"], "must be >= 1"),
    "backend.compile": (
        ["backend.name=deepspeed", "backend.compile=true"],
        "not supported with backend.name=deepspeed",
    ),
    "backend.compile_scope": (["backend.compile_scope=layers"], "one of model, encoders"),
    "backend.compile_mode": (
        ["backend.compile_mode=fast"],
        "one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
    ),
    "checkpoint.keep_last": (["checkpoint.keep_last=0"], "must be >= 1"),
    "checkpoint.every_steps": (["checkpoint.every_steps=-1"], "must be >= 0"),
    "checkpoint.upload_failure": (["checkpoint.upload_failure=retry"], "must be one of continue, stop"),
    "checkpoint.upload_attempts": (["checkpoint.upload_attempts=0"], "must be >= 1"),
    "checkpoint.lock_lease_s": (["checkpoint.lock_lease_s=1"], "must be >= 3"),
    "log.every_steps": (["log.every_steps=0"], "must be >= 1"),
    "log.report_to": (["log.report_to=[jsonl,comet]"], "unknown tracker 'comet'"),
}


def test_every_check_has_a_case():
    ids = [check.id for check in CHECKS]
    assert len(ids) == len(set(ids)), "two checks of one key need different names"
    assert sorted(CASES) == sorted(ids), "a check without a case here, or a case without a check"


@pytest.mark.parametrize("check_id", sorted(CASES))
def test_a_bad_value_fails_in_one_line_naming_the_key(check_id):
    overrides, why = CASES[check_id]
    key = check_id.partition("[")[0]
    with pytest.raises(MsaDistError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert message.startswith(f"{key}=") and why in message, message
    assert "\n" not in message


@pytest.mark.parametrize("check_id", sorted(CASES))
def test_the_same_value_in_a_yaml_file_or_set_in_place_fails_too(check_id, tmp_path):
    overrides, why = CASES[check_id]
    values = [(key, yaml.safe_load(value)) for key, value in (item.split("=", 1) for item in overrides)]
    nested: dict = {}
    for key, value in values:
        *sections, leaf = key.split(".")
        cur = nested
        for section in sections:
            cur = cur.setdefault(section, {})
        cur[leaf] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(nested))
    with pytest.raises(MsaDistError) as err:
        load_config(path)
    assert why in str(err.value)
    cfg = Config()
    for key, value in values:  # a sweep point: set key by key, then checked as a whole
        set_dotted(cfg, key, value)
    with pytest.raises(MsaDistError) as err:
        validate(cfg)
    assert why in str(err.value)


def test_checks_see_the_final_values_of_all_layers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  head: {fusion: cross_attention, proj_dim: 21}\n")
    # attn_heads=7 divides the file's proj_dim 21 (not the default 256); checked once, after the last layer
    assert load_config(path, ["model.head.attn_heads=7"]).model.head.attn_heads == 7
    assert load_config(None, ["model.head.fusion=gated", "model.modality=text", "model.head.fusion=concat"])
    # the divisibility only matters where it is used
    assert TextEncoderConfig(name="bert-base-uncased", tiny_heads=3).tiny_heads == 3


def test_defaults_pass_and_the_tiny_vocab_floor_matches_the_tokenizer():
    from msa_dist.models.tokenizer import SPECIAL_TOKENS

    assert validate(Config()) is not None
    assert len(SPECIAL_TOKENS) + 1 == MIN_TINY_VOCAB


def test_train_with_a_bad_value_exits_with_one_line_and_builds_nothing(tmp_path, capsys, monkeypatch):
    import msa_dist.engine.trainer as trainer

    trained = []
    monkeypatch.setattr(trainer, "train", lambda *a, **k: trained.append(a))
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{shards: {tmp_path / 'no-shards'}}}\nmodel: {{head: {{fusion: cross_attention}}}}\n")
    run_dir = tmp_path / "run"
    code = main(["train", "--config", str(config), "--run-dir", str(run_dir), "model.head.attn_heads=7"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "msa-dist: error: model.head.attn_heads=7: must divide model.head.proj_dim=256\n"
    assert trained == [] and not run_dir.exists()
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


@pytest.mark.parametrize("value", ["1e999", "-1e999", "nan", ".inf", "-.inf", "NaN"])
def test_non_finite_numbers_are_refused_when_the_config_is_loaded(value, tmp_path):
    with pytest.raises(MsaDistError, match="optim.lr' expects a finite number"):
        load_config(None, [f"optim.lr={value}"])
    path = tmp_path / "c.yaml"
    path.write_text(f"optim:\n  betas: [0.9, {value}]\n")
    with pytest.raises(MsaDistError, match="optim.betas' expects a finite number"):
        load_config(path)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes("train:\n  seed: 1  # r\u00e9sum\u00e9\n".encode("latin-1"))
    with pytest.raises(MsaDistError, match="is not UTF-8 text"):
        load_config(path)
    assert main(["config", "show", "--config", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["train", "--config", str(path), "train.seed=100000000000000000000000"]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
