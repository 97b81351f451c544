"""The `msa-dist shards` subcommands: their options here, the work in shards.py, indexer.py,
show.py and serve.py."""

from __future__ import annotations

import argparse

from msa_dist.data.format.manifest import DEFAULT_IMAGE_SIZE, DEFAULT_JPEG_QUALITY


def add_shards_parser(sub) -> None:
    """Register `shards build`, `verify`, `index`, `serve` and `show` (imports nothing heavy)."""
    shards = sub.add_parser("shards", help="pack the raw data into WebDataset shards, or verify them")
    shards.set_defaults(handler="msa_dist.cli.shards:run_shards_command")
    ssub = shards.add_subparsers(dest="shards_command", required=True)
    b = ssub.add_parser("build", help="build shards from a course-layout DATA_ROOT")
    b.add_argument("data_root", help="folder holding train.txt, test_without_label.txt and data/<guid>.jpg|.txt")
    b.add_argument("--out", default="shards", help="the shard folder to write (default %(default)s)")
    b.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of train.txt held out as the val split, stratified by label (default %(default)s)",
    )
    b.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default %(default)s)")
    b.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default %(default)s)")
    b.add_argument("--strict", action="store_true", help="fail on the first bad record instead of skipping it")
    b.add_argument("--labels", help="a guid,tag file to read instead of train.txt / test_without_label.txt")
    b.add_argument("--split", help="with --labels: the split name its records go to")
    b.add_argument(
        "--image-size",
        type=int,
        default=DEFAULT_IMAGE_SIZE,
        help="re-encode images to this shorter side, the training resolution (data.resize_size), so "
        "loaders decode small JPEGs and crop without resizing (0 keeps the original bytes; default %(default)s)",
    )
    b.add_argument(
        "--jpeg-quality",
        type=int,
        default=DEFAULT_JPEG_QUALITY,
        help="quality of the re-encoded JPEGs: lower decodes faster (default %(default)s)",
    )
    v = ssub.add_parser("verify", help="re-read every shard and check it against manifest.json")
    v.add_argument("shard_dir", help="a shard folder or URL (file://, http(s)://, s3://...) with a manifest.json")
    ix = ssub.add_parser(
        "index",
        help="write a sample index beside every shard (and a manifest.json if there is "
        "none): for webdataset tars built elsewhere or before indexes existed",
    )
    ix.add_argument("shard_dir", help="a folder of .tar shards, or a writable fsspec URL (s3://...)")
    sv = ssub.add_parser("serve", help="serve a shard folder over HTTP with Range requests (data.shards=http://...)")
    sv.add_argument("shard_dir", help="the folder to serve")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    from msa_dist.data.stores.serve import add_serve_options

    add_serve_options(sv)
    sh = ssub.add_parser("show", help="print the first samples of a split (key, label, text, image size)")
    sh.add_argument("shard_dir", help="a folder written by `msa-dist shards build`")
    sh.add_argument("--split", default="train", help="which split to show (default %(default)s)")
    sh.add_argument("-n", type=int, default=5, help="how many samples (default %(default)s)")


def run_shards_command(args: argparse.Namespace) -> int:
    """Run one `msa-dist shards` subcommand."""
    from msa_dist.common.display import console

    if args.shards_command == "build":
        from msa_dist.data.shards import build_shards, print_build_summary

        manifest = build_shards(
            args.data_root,
            args.out,
            val_fraction=args.val_fraction,
            seed=args.seed,
            shard_size=args.shard_size,
            strict=args.strict,
            labels_file=args.labels,
            split_name=args.split,
            image_size=args.image_size,
            jpeg_quality=args.jpeg_quality,
            console=console,
        )
        print_build_summary(manifest, console)
    elif args.shards_command == "show":
        from msa_dist.data.show import print_samples, show_samples

        print_samples(show_samples(args.shard_dir, args.split, args.n), args.split, console)
    elif args.shards_command == "index":
        from msa_dist.data.indexer import index_shard_set

        counts = index_shard_set(args.shard_dir)
        console.print(f"indexed {args.shard_dir}: " + ", ".join(f"{k} {v} samples" for k, v in counts.items()))
    elif args.shards_command == "serve":
        from msa_dist.data.stores.serve import run_serve

        run_serve(args, console)
    else:
        from msa_dist.data.verify import print_verify_summary, verify_shards

        print_verify_summary(verify_shards(args.shard_dir), console)
    return 0
