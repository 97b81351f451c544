"""Benchmarks: `msa-dist bench data` (loader samples/s per worker core) and `bench train`
(training samples/s, tokens/s, data wait vs compute, peak memory, MFU).

Benchmarks build the configured architectures with random weights, so they need no hub access
and no pretrained files; sizes (and so speed) are those of the real models.
"""
