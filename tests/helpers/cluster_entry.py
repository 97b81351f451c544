"""A torchrun entry point for tests/integration/test_cluster.py: `msa-dist train` that logs what it trains on.

MSA_TEST_KEY_LOG=DIR   each worker appends to DIR/keys-r{restart}-rank{rank}.jsonl a line per
                       epoch it starts ({"start": [epoch, samples_done]}, the stream's position)
                       and per micro batch ({"epoch", "end": samples of the epoch done after it,
                       on all ranks, "keys"}), so a test can check that, across restarts, every
                       sample of every epoch was trained on exactly once.
MSA_TEST_BATCH_DELAY_S  sleep this long per micro batch: a tiny model's epoch lasts long enough
                       for a test to kill a node in the middle of it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from msa_dist.cli import main
from msa_dist.data.loading.stream import TrainStream


def logging_epoch(real_epoch, log_dir: Path, delay_s: float):
    """Wrap TrainStream.epoch to log its start position and the keys of every batch it yields."""
    name = f"keys-r{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}-rank{os.environ.get('RANK', '0')}.jsonl"

    def epoch(self, n: int):
        with (log_dir / name).open("a") as out:
            out.write(json.dumps({"start": [self.state_dict()["epoch"], self.state_dict()["samples_done"]]}) + "\n")
            out.flush()
            for batch in real_epoch(self, n):
                state = self.state_dict()  # the stream has counted this batch already
                out.write(
                    json.dumps({"epoch": state["epoch"], "end": state["samples_done"], "keys": list(batch["keys"])})
                    + "\n"
                )
                out.flush()
                time.sleep(delay_s)
                yield batch

    return epoch


if __name__ == "__main__":
    if os.environ.get("MSA_TEST_KEY_LOG"):
        TrainStream.epoch = logging_epoch(
            TrainStream.epoch,
            Path(os.environ["MSA_TEST_KEY_LOG"]),
            float(os.environ.get("MSA_TEST_BATCH_DELAY_S", "0")),
        )
    sys.exit(main(sys.argv[1:]))
