"""A from-scratch bag of n-gram embeddings (fastText-like): the neural cousin of TF-IDF + logistic regression.

Each token gets its embedding plus the embedding of the hashed (token, next token) bigram; with
mean pooling the text vector is the average of those. On a few thousand tweets this learns faster and
overfits less than a small transformer. It mimics a Hugging Face model's call signature
(`model(input_ids=..., attention_mask=...).last_hidden_state`), so `TextEncoder` wraps it unchanged.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import PretrainedConfig

_HASH_MULTIPLIER = 1_000_003  # a prime: (a, b) -> a * p + b spreads bigrams over the buckets


class BagOfNgramsConfig(PretrainedConfig):
    """Sizes of a `BagOfNgrams` (saved with the run like any text backbone's config)."""
    model_type = "msa_dist_bag_of_ngrams"

    def __init__(self, vocab_size: int = 8000, hidden_size: int = 128, bigram_buckets: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.bigram_buckets = vocab_size, hidden_size, bigram_buckets


class BagOfNgrams(nn.Module):
    """Token embeddings plus hashed token-bigram embeddings, one state per position."""

    def __init__(self, config: BagOfNgramsConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.bigrams = nn.Embedding(config.bigram_buckets, config.hidden_size) if config.bigram_buckets else None
        for emb in (self.tokens, self.bigrams):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        states = self.tokens(input_ids)
        if self.bigrams is not None:
            next_ids = torch.roll(input_ids, -1, dims=1)
            # a bigram exists where both its tokens are real (the last position has no successor)
            valid = attention_mask * torch.roll(attention_mask, -1, dims=1)
            valid[:, -1] = 0
            buckets = (input_ids * _HASH_MULTIPLIER + next_ids) % self.config.bigram_buckets
            states = states + self.bigrams(buckets) * valid.unsqueeze(-1).to(states.dtype)
        return SimpleNamespace(last_hidden_state=states)
