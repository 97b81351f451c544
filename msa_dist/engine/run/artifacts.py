"""What a run directory holds besides checkpoints, and how a model is rebuilt from it.

RUN_DIR/config.yaml      the resolved config
RUN_DIR/tokenizer/       the tokenizer (trained on the train texts for the tiny model)
RUN_DIR/text_config/     the text backbone's architecture, so no hub access is needed later
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
import yaml

from msa_dist.common.atomic import atomic_dir, temp_path
from msa_dist.common.errors import MsaDistError
from msa_dist.common.jsonfile import file_error, read_run_bytes
from msa_dist.common.limits import text_char_limit
from msa_dist.config.schema import Config, from_dict
from msa_dist.data.format.manifest import load_manifest
from msa_dist.data.loading.loader import iter_texts
from msa_dist.engine.checkpoint.safe_load import load_tensors
from msa_dist.models import build_model
from msa_dist.models.text import save_text_architecture
from msa_dist.models.tokenizer import load_pretrained_tokenizer, train_wordpiece_tokenizer


def prepare_tokenizer(cfg: Config, run_dir: Path, backend, share=None):
    """Rank 0 trains (tiny) or loads (pretrained) the tokenizer into the run dir; all ranks load it
    (`share(name, backend)`: with no folder shared between ranks, rank 0's copy reaches the others)."""
    tok_dir = run_dir / "tokenizer"
    if backend.env.is_main and not (tok_dir / "tokenizer_config.json").exists():
        if cfg.model.text.name == "tiny":
            tokenizer = _shard_wordpiece(cfg.data.shards, cfg.model.text.tiny_vocab_size)
        else:
            tokenizer = load_pretrained_tokenizer(cfg.model.text.name)
        with atomic_dir(tok_dir) as fresh:  # not into what lies there: links planted in it would be followed
            tokenizer.save_pretrained(str(fresh))
    backend.barrier()
    if share is not None:
        share("tokenizer", backend)
    return load_pretrained_tokenizer(str(tok_dir))


def _shard_wordpiece(shard_dir: str, vocab_size: int):
    """The WordPiece trained on these shards' train texts, cached in $MSA_DIST_CACHE (default
    ~/.cache/msa-dist; delete it at will) under the shards' sha256s: never in the shard folder, which
    may come from elsewhere and must not choose the tokenizer (only shards, indexes and the manifest
    are read from it).

    `tokenizers` breaks frequency ties differently in every process, so two trainings on the same
    texts give different vocabularies; sharing one per (train shards, vocab size) keeps runs with
    the same seed repeatable. A read-only cache folder just means no cache.
    """
    shards = load_manifest(shard_dir)["splits"]["train"]["shards"]
    digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()[:32]
    root = Path(os.environ.get("MSA_DIST_CACHE") or Path.home() / ".cache" / "msa-dist")
    cache = root / "tokenizers" / f"wordpiece-{vocab_size}-{digest}"
    if (cache / "tokenizer_config.json").exists():
        return load_pretrained_tokenizer(str(cache))
    tokenizer = train_wordpiece_tokenizer(iter_texts(shard_dir, "train"), vocab_size)
    tmp = temp_path(cache)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, cache)
    except OSError:  # another run won the race (use its copy), or the folder is read-only
        shutil.rmtree(tmp, ignore_errors=True)
        if (cache / "tokenizer_config.json").exists():
            return load_pretrained_tokenizer(str(cache))
    return tokenizer


def build_run_model(cfg: Config, run_dir: Path, tokenizer, backend) -> torch.nn.Module:
    """The model with pretrained weights where configured; saves the text architecture (rank 0)."""
    model = build_model(cfg.model, vocab_size=len(tokenizer), pretrained=True)
    for encoder in (model.text_encoder, getattr(model, "bow_encoder", None)):
        _fit_bag_of_ngrams(getattr(encoder, "model", None), cfg, tokenizer)
    if backend.env.is_main and model.text_encoder is not None:
        with atomic_dir(run_dir / "text_config") as fresh:
            save_text_architecture(model.text_encoder, fresh)
    return model


def _fit_bag_of_ngrams(backbone, cfg: Config, tokenizer) -> None:
    """A bag of n-grams (the tiny text model or the model.bow branch) hashes each token's characters and,
    with TF-IDF weighting, counts the train texts' n-grams; any other backbone is left as it is."""
    if hasattr(backbone, "index_vocabulary"):
        backbone.index_vocabulary(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    if getattr(getattr(backbone, "config", None), "idf", False):
        texts = iter_texts(cfg.data.shards, "train", max_chars=text_char_limit(cfg.data.max_length))
        enc = tokenizer(
            list(texts), padding="longest", truncation=True, max_length=cfg.data.max_length, return_tensors="pt"
        )
        backbone.fit_idf(enc["input_ids"], enc["attention_mask"])


def load_run_config(run_dir: Path) -> Config:
    """The resolved config saved by `msa-dist train`."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file() and not path.is_symlink():
        raise MsaDistError(
            f"{run_dir} is not a run directory (no config.yaml): pass the --run-dir of a `msa-dist train`"
        )
    try:
        values = yaml.safe_load(read_run_bytes(path).decode("utf-8"))  # a regular file, not a link
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        reason = file_error(exc)
        raise MsaDistError(f"{path} is not readable YAML ({reason})") from None
    if not isinstance(values, dict):
        raise MsaDistError(f"{path} holds no config (a YAML mapping of sections)")
    try:
        return from_dict(values)
    except MsaDistError as exc:
        raise MsaDistError(f"{path}: {exc}") from None


def check_model_size(build, weights: Path) -> None:
    """One line when the model a config describes is far larger than its weights file: it is built on
    the meta device first (no memory), so a config asking for an 800 GB model fails before allocating."""
    try:
        stored = os.stat(weights).st_size
        with torch.device("meta"):
            meta = build()
    except MsaDistError:
        raise
    except Exception:  # a missing file or an unusual model: the real build and load report it
        return
    tensors = {id(t): t for t in [*meta.parameters(), *meta.buffers()]}.values()
    needed = sum(t.numel() * t.element_size() for t in tensors)
    if needed > 2 * stored + (64 << 20):
        raise MsaDistError(
            f"{weights.parent}: its config describes a model of {needed / 2**30:.1f} GiB but {weights.name} "
            f"holds {stored / 2**30:.3f} GiB: the config does not belong to these weights"
        )


def load_trained_model(run_dir: Path, weights: Path, device: torch.device):
    """Rebuild the architecture from the run dir (no hub access) and load plain weights."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    tokenizer = load_pretrained_tokenizer(str(run_dir / "tokenizer"))
    arch_dir = run_dir / "text_config"

    def build():
        arch = str(arch_dir) if arch_dir.exists() else None
        return build_model(cfg.model, vocab_size=len(tokenizer), pretrained=False, arch_dir=arch)

    check_model_size(build, Path(weights))
    model = build()
    model.load_state_dict(load_tensors(weights))
    return cfg, tokenizer, model.to(device).eval()
