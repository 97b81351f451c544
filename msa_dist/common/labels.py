"""The sentiment classes, in the index order used by shards, models and predictions."""

LABELS = ("positive", "neutral", "negative")
LABEL_TO_INDEX = {name: i for i, name in enumerate(LABELS)}
NUM_CLASSES = len(LABELS)
