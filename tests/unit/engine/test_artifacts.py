"""Run-dir artifacts: the tiny model's WordPiece is shared per shard set, so runs repeat."""

from __future__ import annotations

from msa_dist.engine.run.artifacts import _shard_wordpiece


def test_wordpiece_is_cached_per_shard_set_and_vocab_size(shard_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MSA_DIST_CACHE", str(tmp_path / "cache"))
    first = _shard_wordpiece(str(shard_dir), 60)
    cached = list((tmp_path / "cache" / "tokenizers").iterdir())
    assert [p.name.startswith("wordpiece-60-") for p in cached] == [True]
    # `tokenizers` breaks ties differently per process; the cache makes a second run see the same vocab.
    assert _shard_wordpiece(str(shard_dir), 60).get_vocab() == first.get_vocab()
    _shard_wordpiece(str(shard_dir), 70)
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 2
