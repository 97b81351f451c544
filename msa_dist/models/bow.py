"""A from-scratch bag of n-gram embeddings (fastText-like): the neural cousin of TF-IDF + logistic regression.

Each token gets its embedding plus the embedding of the hashed (token, next token) bigram and, with
`char_buckets`, the mean embedding of the token's hashed character 2-5-grams (fastText's subwords:
"#happy", "happyyy" and "happy" share most of theirs, where a word vocabulary keeps them apart).
With mean pooling the text vector is the average of those; with `idf` it is TF-IDF's weighted sum
instead (each n-gram weighted by its inverse document frequency in the train texts, each kind of
n-gram L2-normalised over the text). On a few thousand tweets this learns faster and overfits less
than a small transformer. It mimics a Hugging Face model's call signature
(`model(input_ids=..., attention_mask=...).last_hidden_state`), so `TextEncoder` wraps it unchanged.
"""

from __future__ import annotations

import math
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

    def __init__(
        self,
        vocab_size: int = 8000,
        hidden_size: int = 128,
        bigram_buckets: int = 0,
        char_buckets: int = 0,
        token_dropout: float = 0.0,
        idf: bool = False,
        init_std: float = 0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.bigram_buckets = vocab_size, hidden_size, bigram_buckets
        self.char_buckets, self.token_dropout, self.idf, self.init_std = char_buckets, token_dropout, idf, init_std


def char_ngram_buckets(token: str, buckets: int) -> list[int]:
    """The hashed character n-grams of one vocabulary token, in `<token>` form (fastText's word boundaries)."""
    word = token[2:] if token.startswith("##") else f"<{token}"  # a continuation piece has no start boundary
    word += ">"
    grams = [word[i : i + n] for n in CHAR_NGRAMS for i in range(len(word) - n + 1)]
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
                nn.init.normal_(emb.weight, std=config.init_std)
        if self.chars is not None:
            with torch.no_grad():
                self.chars.weight[config.char_buckets].zero_()
        if config.idf:
            # inverse document frequencies in the train texts (`fit_idf`), saved with the weights; 1 until fitted
            self.register_buffer("idf_tokens", torch.ones(config.vocab_size))
            if self.bigrams is not None:
                self.register_buffer("idf_bigrams", torch.ones(config.bigram_buckets))
            if self.chars is not None:
                self.register_buffer("idf_chars", torch.ones(config.char_buckets + 1))
                self.idf_chars[config.char_buckets] = 0.0  # the padding n-gram weighs nothing

    def index_vocabulary(self, tokens: list[str]) -> None:
        """Map each token id to its character n-grams (a new model; a loaded one has the table in its weights)."""
        if self.chars is None:
            return
        table = torch.full_like(self.char_table, self.config.char_buckets)
        for i, token in enumerate(tokens[: len(table)]):
            ids = char_ngram_buckets(token, self.config.char_buckets)
            table[i, : len(ids)] = torch.tensor(ids, dtype=table.dtype)
        self.char_table.copy_(table)

    def _bigrams(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each position's (token, next token) bucket, and whether that bigram exists (both tokens real)."""
        next_ids = torch.roll(input_ids, -1, dims=1)
        valid = attention_mask * torch.roll(attention_mask, -1, dims=1)
        valid[:, -1] = 0  # the last position has no successor
        return (input_ids * _HASH_MULTIPLIER + next_ids) % self.config.bigram_buckets, valid

    @torch.no_grad()
    def fit_idf(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int = 512) -> None:
        """Smoothed IDF, log((1 + n) / (1 + df)) + 1 as scikit-learn's, of every token, bigram bucket and
        character n-gram bucket, counting each once per text, over these tokenized (train) texts."""
        kinds = [("idf_tokens", self.config.vocab_size, lambda ids, mask: (ids, mask))]
        if self.bigrams is not None:
            kinds.append(("idf_bigrams", self.config.bigram_buckets, self._bigrams))
        if self.chars is not None:
            kinds.append(
                (
                    "idf_chars",
                    self.config.char_buckets,
                    lambda ids, mask: (self.char_table[ids].flatten(1), mask.repeat_interleave(MAX_CHAR_NGRAMS, 1)),
                )
            )
        n = len(input_ids)
        for name, size, features in kinds:
            df = torch.zeros(size + 1)
            for start in range(0, n, chunk):
                ids, valid = features(input_ids[start : start + chunk], attention_mask[start : start + chunk])
                present = torch.zeros(len(ids), size + 1, dtype=torch.bool)
                present.scatter_(1, torch.where(valid.bool(), ids, size), True)  # column `size`: no feature
                df += present.sum(0)
            idf = math.log(1.0 + n) - torch.log1p(df[:size]) + 1.0
            getattr(self, name)[:size] = idf.to(getattr(self, name).dtype)

    def _tfidf_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each position's n-grams weighted by IDF, each kind L2-normalised over the text and scaled by the
        text's length, so that mean pooling gives TF-IDF's weighted sum of embeddings."""
        mask = attention_mask.to(self.tokens.weight.dtype)
        length = mask.sum(1).clamp(min=1.0)

        def scaled(weight: torch.Tensor) -> torch.Tensor:
            norm = weight.pow(2).flatten(1).sum(1).sqrt().clamp(min=1e-6)
            return (weight * (length / norm).view(-1, *[1] * (weight.dim() - 1))).unsqueeze(-1)

        states = self.tokens(input_ids) * scaled(self.idf_tokens[input_ids] * mask)
        if self.bigrams is not None:
            buckets, valid = self._bigrams(input_ids, attention_mask)
            states = states + self.bigrams(buckets) * scaled(self.idf_bigrams[buckets] * valid)
        if self.chars is not None:
            grams = self.char_table[input_ids]  # [B, T, MAX_CHAR_NGRAMS]
            states = states + (self.chars(grams) * scaled(self.idf_chars[grams] * mask.unsqueeze(-1))).sum(2)
        return states

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        if self.config.idf:
            return SimpleNamespace(
                last_hidden_state=self._drop_tokens(self._tfidf_states(input_ids, attention_mask), input_ids)
            )
        states = self.tokens(input_ids)
        if self.bigrams is not None:
            buckets, valid = self._bigrams(input_ids, attention_mask)
            states = states + self.bigrams(buckets) * valid.unsqueeze(-1).to(states.dtype)
        if self.chars is not None:
            grams = self.char_table[input_ids]  # [B, T, MAX_CHAR_NGRAMS]
            count = (grams != self.config.char_buckets).sum(-1, keepdim=True).clamp(min=1)
            states = states + self.chars(grams).sum(2) / count.to(states.dtype)
        return SimpleNamespace(last_hidden_state=self._drop_tokens(states, input_ids))

    def _drop_tokens(self, states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Training: drop whole tokens (their every feature), so no single word carries a prediction alone."""
        if not self.training or self.config.token_dropout <= 0:
            return states
        keep = torch.rand(input_ids.shape, device=input_ids.device) >= self.config.token_dropout
        return states * keep.unsqueeze(-1).to(states.dtype) / (1.0 - self.config.token_dropout)
