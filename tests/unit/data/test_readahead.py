"""Read-ahead (data/loading/readahead.py): near runs of one shard coalesce into one request. Reads over
HTTP: tests/integration/test_remote.py."""

from __future__ import annotations


def test_coalesce_merges_near_runs_of_one_shard_only():
    from msa_dist.data.loading.readahead import MAX_REQUEST_BYTES, Run, coalesce

    runs = [
        Run(0, [], 0, 100),
        Run(0, [], 150, 200),
        Run(0, [], 1000, 1100),
        Run(1, [], 200, 300),
        Run(0, [], 180, 260),
        Run(0, [], 2000, 2000 + MAX_REQUEST_BYTES),
    ]
    requests = coalesce(runs, gap_bytes=50)
    assert [(r.shard, r.start, r.end) for r in requests] == [
        (0, 0, 260),
        (0, 1000, 1100),
        (0, 2000, 2000 + MAX_REQUEST_BYTES),
        (1, 200, 300),
    ]
    assert [(r.request.start, r.request.end) for r in runs] == [
        (0, 260),
        (0, 260),
        (1000, 1100),
        (200, 300),
        (0, 260),
        (2000, 2000 + MAX_REQUEST_BYTES),
    ]
    assert len(coalesce([Run(0, [], 0, 100), Run(0, [], 101, 200)], gap_bytes=0)) == 2
