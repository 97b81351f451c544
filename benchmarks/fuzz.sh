#!/usr/bin/env bash
# The long fuzz run of issue 23: mutated shards, indexes, manifests and `predict --inputs` files
# (tests/unit/data/test_fuzz.py), N examples per target (CI runs 30). Derandomized (a fixed seed): every
# run repeats the same examples; a failure prints the falsifying example, shrunk.
#
#   bash benchmarks/fuzz.sh [EXAMPLES]        # default 5000 (about 10-15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_EXAMPLES=${1:-5000} python -m pytest -q -p no:cacheprovider tests/unit/data/test_fuzz.py \
    -W ignore::hypothesis.errors.HypothesisWarning --hypothesis-show-statistics
