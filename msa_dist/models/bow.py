"""A from-scratch bag of n-gram embeddings (fastText-like): the neural cousin of TF-IDF + logistic regression.

Each token gets its embedding plus the embedding of the hashed (token, next token) bigram and, with
`char_buckets`, the mean embedding of the token's hashed character 2-5-grams (fastText's subwords:
"#happy", "happyyy" and "happy" share most of theirs, where a word vocabulary keeps them apart).
With mean pooling the text vector is the average of those. On a few thousand tweets this learns
faster and overfits less than a small transformer. It mimics a Hugging Face model's call signature
(`model(input_ids=..., attention_mask=...).last_hidden_state`), so `TextEncoder` wraps it unchanged.
"""
from __future__ import annotations

import zlib
from types import SimpleNamespace

import torch
from torch import nn
from transformers import PretrainedConfig

_HASH_MULTIPLIER = 1_000_003  # a prime: (a, b) -> a * p + b spreads bigrams over the buckets
CHAR_NGRAMS = (2, 3, 4, 5)
MAX_CHAR_NGRAMS = 32  # character n-grams kept per token (a token's longest ones are dropped)


class BagOfNgramsConfig(PretrainedConfig):
    """Sizes of a `BagOfNgrams` (saved with the run like any text backbone's config)."""
    model_type = "msa_dist_bag_of_ngrams"

    def __init__(self, vocab_size: int = 8000, hidden_size: int = 128, bigram_buckets: int = 0,
                 char_buckets: int = 0, token_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.bigram_buckets = vocab_size, hidden_size, bigram_buckets
        self.char_buckets, self.token_dropout = char_buckets, token_dropout


def char_ngram_buckets(token: str, buckets: int) -> list[int]:
    """The hashed character n-grams of one vocabulary token, in `<token>` form (fastText's word boundaries)."""
    word = token[2:] if token.startswith("##") else f"<{token}"  # a continuation piece has no start boundary
    word += ">"
    grams = [word[i:i + n] for n in CHAR_NGRAMS for i in range(len(word) - n + 1)]
    return [zlib.crc32(g.encode("utf-8")) % buckets for g in grams[:MAX_CHAR_NGRAMS]]


class BagOfNgrams(nn.Module):
    """Token embeddings plus hashed token-bigram and character n-gram embeddings, one state per position."""

    def __init__(self, config: BagOfNgramsConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.bigrams = nn.Embedding(config.bigram_buckets, config.hidden_size) if config.bigram_buckets else None
        self.chars = None
        if config.char_buckets:
            # row `char_buckets` is the padding n-gram (zero, never trained)
            self.chars = nn.Embedding(config.char_buckets + 1, config.hidden_size, padding_idx=config.char_buckets)
            # token id -> its n-gram buckets; filled from the tokenizer by `index_vocabulary`, saved with the weights
            self.register_buffer("char_table", torch.full((config.vocab_size, MAX_CHAR_NGRAMS), config.char_buckets))
        for emb in (self.tokens, self.bigrams, self.chars):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.1)
        if self.chars is not None:
            with torch.no_grad():
                self.chars.weight[config.char_buckets].zero_()

    def index_vocabulary(self, tokens: list[str]) -> None:
        """Map each token id to its character n-grams (a new model; a loaded one has the table in its weights)."""
        if self.chars is None:
            return
        table = torch.full_like(self.char_table, self.config.char_buckets)
        for i, token in enumerate(tokens[:len(table)]):
            ids = char_ngram_buckets(token, self.config.char_buckets)
            table[i, :len(ids)] = torch.tensor(ids, dtype=table.dtype)
        self.char_table.copy_(table)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        states = self.tokens(input_ids)
        if self.bigrams is not None:
            next_ids = torch.roll(input_ids, -1, dims=1)
            # a bigram exists where both its tokens are real (the last position has no successor)
            valid = attention_mask * torch.roll(attention_mask, -1, dims=1)
            valid[:, -1] = 0
            buckets = (input_ids * _HASH_MULTIPLIER + next_ids) % self.config.bigram_buckets
            states = states + self.bigrams(buckets) * valid.unsqueeze(-1).to(states.dtype)
        if self.chars is not None:
            grams = self.char_table[input_ids]  # [B, T, MAX_CHAR_NGRAMS]
            count = (grams != self.config.char_buckets).sum(-1, keepdim=True).clamp(min=1)
            states = states + self.chars(grams).sum(2) / count.to(states.dtype)
        if self.training and self.config.token_dropout > 0:
            # drop whole tokens (their every feature): no single word can carry a prediction alone
            keep = torch.rand(input_ids.shape, device=input_ids.device) >= self.config.token_dropout
            states = states * keep.unsqueeze(-1).to(states.dtype) / (1.0 - self.config.token_dropout)
        return SimpleNamespace(last_hidden_state=states)
