"""msa-dist: distributed multi-GPU trainer for image-text sentiment analysis."""

__version__ = "0.1.0"
