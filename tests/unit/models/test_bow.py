"""The bag of n-grams' character n-grams: hashed per vocabulary token, saved with the weights."""

from __future__ import annotations

import math

import pytest
import torch

from msa_dist.config.model_section import TextEncoderConfig
from msa_dist.config.schema import load_config
from msa_dist.engine.checkpoint.files import model_weights_path
from msa_dist.engine.run.artifacts import load_trained_model
from msa_dist.experiments.demo import DEMO_CONFIG
from msa_dist.models.bow import MAX_CHAR_NGRAMS, char_ngram_buckets
from msa_dist.models.text import build_text_encoder


def tiny_cfg(shard_dir, *extra):
    return load_config(
        base=DEMO_CONFIG,
        overrides=[
            f"data.shards={shard_dir}",
            "data.image_size=32",
            "data.resize_size=32",
            "data.workers=0",
            "train.epochs=1",
            "train.batch_size=4",
            "log.progress=false",
            "model.text.tiny_vocab_size=100",
            "optim.warmup_steps=1",
            *extra,
        ],
    )


def test_char_ngrams_of_related_tokens_overlap():
    happy, tagged = set(char_ngram_buckets("happy", 1000)), set(char_ngram_buckets("#happy", 1000))
    assert len(happy & tagged) >= len(happy) - 4  # only the n-grams at the start differ
    assert char_ngram_buckets("happy", 1000) == char_ngram_buckets("happy", 1000)  # stable across processes
    assert char_ngram_buckets("##py", 1000) != char_ngram_buckets("py", 1000)  # a piece has no start boundary
    assert len(char_ngram_buckets("x" * 40, 1000)) == MAX_CHAR_NGRAMS


def test_token_states_include_their_char_ngrams_and_token_dropout_only_trains():
    cfg = TextEncoderConfig(
        name="tiny", tiny_arch="bow", pooling="mean", tiny_hidden=8, tiny_char_buckets=64, tiny_token_dropout=0.5
    )
    encoder = build_text_encoder(cfg, vocab_size=4)
    ids, mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long)
    encoder.eval()
    plain = encoder.forward_tokens(ids, mask).detach().clone()
    encoder.model.index_vocabulary(["[PAD]", "happy", "sad", "[UNK]"])
    states = encoder.forward_tokens(ids, mask).detach()
    assert not torch.allclose(states, plain)  # the n-grams add to the token embedding
    assert torch.equal(encoder.forward_tokens(ids, mask), states)  # eval: no token dropout
    encoder.train()
    torch.manual_seed(0)
    dropped = [encoder.forward_tokens(torch.tensor([[1] * 64]), torch.ones(1, 64, dtype=torch.long)) for _ in range(2)]
    assert (dropped[0].abs().sum(-1) == 0).any()  # some tokens dropped while training


def test_a_trained_run_reloads_its_char_table(tmp_path, shard_dir):
    from msa_dist.engine.trainer import train

    cfg = tiny_cfg(
        shard_dir,
        "model.text.tiny_arch=bow",
        "model.text.pooling=mean",
        "model.text.tiny_char_buckets=128",
        "model.text.tiny_bigram_buckets=64",
    )
    train(cfg, tmp_path / "run")
    _, tokenizer, model = load_trained_model(
        tmp_path / "run", model_weights_path(tmp_path / "run", "latest"), torch.device("cpu")
    )
    table = model.text_encoder.model.char_table
    hashtag = tokenizer.convert_tokens_to_ids("#")
    assert (table != 128).any() and table.shape[0] == len(tokenizer)
    assert table[hashtag].tolist()[:3] == char_ngram_buckets("#", 128)[:3]


def test_idf_weighting_gives_tfidf_weighted_sums():
    cfg = TextEncoderConfig(name="tiny", tiny_arch="bow", pooling="mean", tiny_hidden=4, tiny_idf=True)
    encoder = build_text_encoder(cfg, vocab_size=6).eval()
    bow = encoder.model
    ids = torch.tensor([[1, 2, 3, 0], [1, 4, 0, 0], [1, 2, 5, 5]])
    mask = (ids != 0).long()
    bow.fit_idf(ids, mask)
    n = 3
    df = {1: 3, 2: 2, 3: 1, 4: 1, 5: 1}  # token 5 twice in one text: one document
    for token, count in df.items():
        assert bow.idf_tokens[token].item() == pytest.approx(math.log((1 + n) / (1 + count)) + 1)
    assert bow.idf_tokens[0].item() == pytest.approx(math.log(4) + 1)  # never counted where masked out
    weights = bow.idf_tokens[ids[2]]
    expected = (bow.tokens.weight[ids[2]] * weights[:, None]).sum(0) / weights.norm()
    assert torch.allclose(encoder(ids, mask)[2], expected, atol=1e-6)  # mean pooling gives the L2-normalised sum
    padded = torch.cat([ids[1:2], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(encoder(padded, (padded != 0).long())[0], encoder(ids[1:2], mask[1:2])[0], atol=1e-6)


def test_a_run_with_idf_fits_it_on_the_train_texts_and_reloads_it(tmp_path, shard_dir):
    from msa_dist.engine.trainer import train

    cfg = tiny_cfg(
        shard_dir,
        "model.text.tiny_arch=bow",
        "model.text.pooling=mean",
        "model.text.tiny_idf=true",
        "model.text.tiny_char_buckets=128",
        "model.text.tiny_bigram_buckets=64",
    )
    train(cfg, tmp_path / "run")
    _, _, model = load_trained_model(
        tmp_path / "run", model_weights_path(tmp_path / "run", "latest"), torch.device("cpu")
    )
    bow = model.text_encoder.model
    for name in ("idf_tokens", "idf_bigrams", "idf_chars"):
        idf = getattr(bow, name)
        assert (idf > 1).any() and idf.min() >= 0, name  # fitted, not the ones a new model starts with
    assert bow.idf_chars[-1] == 0  # the padding n-gram


def test_a_run_with_the_bow_branch_fits_its_idf_and_reloads_it(tmp_path, shard_dir):
    from msa_dist.engine.trainer import train

    cfg = tiny_cfg(shard_dir, "model.bow.hidden=8", "model.bow.char_buckets=128", "model.bow.bigram_buckets=64")
    train(cfg, tmp_path / "run")
    _, tokenizer, model = load_trained_model(
        tmp_path / "run", model_weights_path(tmp_path / "run", "latest"), torch.device("cpu")
    )
    bow = model.bow_encoder.model
    assert (bow.idf_tokens > 1).any() and (bow.idf_bigrams > 1).any()  # fitted on the train texts, saved, reloaded
    hashtag = tokenizer.convert_tokens_to_ids("#")
    assert bow.char_table[hashtag].tolist()[:3] == char_ngram_buckets("#", 128)[:3]
