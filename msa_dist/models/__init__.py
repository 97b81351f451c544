"""Encoders, fusion heads and the classifier: plain `nn.Module`s, no distributed or engine code."""

from msa_dist.models.classifier import MultimodalSentimentClassifier, build_model

__all__ = ["MultimodalSentimentClassifier", "build_model"]
