"""msa-dist: distributed multi-GPU trainer for image-text sentiment analysis."""

__version__ = "0.1.0"


def load_model(path, device: str = "cpu", checkpoint: str = "best", adjust: bool = False):
    """A trained model with its preprocessing, from `msa-dist export` output or a run dir
    (see msa_dist.inference.predictor)."""
    from msa_dist.inference.predictor import load_model as _load

    return _load(path, device=device, checkpoint=checkpoint, adjust=adjust)
