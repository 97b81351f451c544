"""The `msa-dist` command: parse, build, run. User mistakes print one line, no traceback."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from msa_dist.bench.command import add_bench_parser
from msa_dist.data.manifest import DEFAULT_IMAGE_SIZE, DEFAULT_JPEG_QUALITY
from msa_dist.engine.group import process_group_scope
from msa_dist.errors import MsaDistError, user_message
from msa_dist.experiments.cv_command import add_cv_parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msa-dist", description="Image-text sentiment training on one or many GPUs.")
    sub = p.add_subparsers(dest="command", required=True)

    shards = sub.add_parser("shards", help="pack the raw data into WebDataset shards, or verify them")
    ssub = shards.add_subparsers(dest="shards_command", required=True)
    b = ssub.add_parser("build", help="build shards from a course-layout DATA_ROOT")
    b.add_argument("data_root", help="folder holding train.txt, test_without_label.txt and data/<guid>.jpg|.txt")
    b.add_argument("--out", default="shards", help="the shard folder to write (default %(default)s)")
    b.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train.txt held out as the val split, stratified by label (default %(default)s)")
    b.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default %(default)s)")
    b.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default %(default)s)")
    b.add_argument("--strict", action="store_true", help="fail on the first bad record instead of skipping it")
    b.add_argument("--labels", help="a guid,tag file to read instead of train.txt / test_without_label.txt")
    b.add_argument("--split", help="with --labels: the split name its records go to")
    b.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help="re-encode images to this shorter side, the training resolution (data.resize_size), so "
                        "loaders decode small JPEGs and crop without resizing (0 keeps the original bytes; default %(default)s)")
    b.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY,
                   help="quality of the re-encoded JPEGs: lower decodes faster (default %(default)s)")
    v = ssub.add_parser("verify", help="re-read every shard and check it against manifest.json")
    v.add_argument("shard_dir", help="a shard folder or URL (file://, http(s)://, s3://...) with a manifest.json")
    ix = ssub.add_parser("index", help="write a sample index beside every shard (and a manifest.json if there is "
                         "none): for webdataset tars built elsewhere or before indexes existed")
    ix.add_argument("shard_dir", help="a folder of .tar shards, or a writable fsspec URL (s3://...)")
    sv = ssub.add_parser("serve", help="serve a shard folder over HTTP with Range requests (data.shards=http://...)")
    sv.add_argument("shard_dir", help="the folder to serve")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    sh = ssub.add_parser("show", help="print the first samples of a split (key, label, text, image size)")
    sh.add_argument("shard_dir", help="a folder written by `msa-dist shards build`")
    sh.add_argument("--split", default="train", help="which split to show (default %(default)s)")
    sh.add_argument("-n", type=int, default=5, help="how many samples (default %(default)s)")

    t = sub.add_parser("train", help="train a model")
    t.add_argument("--config", required=True, help="a YAML config, e.g. configs/cpu_small.yaml")
    t.add_argument("--run-dir", default=None, help="where checkpoints, logs and run_info.json go "
                   "(default: runs/<config name>)")
    t.add_argument("--resume", default=None, help="'auto' (the run's latest checkpoint) or a checkpoint dir; "
                   "after a torchrun restart 'auto' is implied")
    t.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    t.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=3e-4")

    e = sub.add_parser("evaluate", help="metrics of a trained run on a labelled split")
    e.add_argument("--run", required=True, help="the --run-dir of a `msa-dist train`")
    e.add_argument("--shards", default=None, help="shard folder to read (default: the run's data.shards)")
    e.add_argument("--split", default="val", help="a labelled split of the shards (default %(default)s)")
    e.add_argument("--checkpoint", default="best", help="best | latest | step-NNNNNNN")
    e.add_argument("--adjust", action="store_true", help="add the per-class logit offsets tuned on val for macro-F1")

    pr = sub.add_parser("predict", help="predict a shard split, or raw pairs (--inputs / --image --text / --data)")
    pr.add_argument("--run", required=True, help="a run dir, or a folder written by `msa-dist export`")
    pr.add_argument("--shards", default=None, help="shard folder of --split (default: the run's data.shards)")
    pr.add_argument("--out", required=True, help="the CSV to write")
    pr.add_argument("--split", default="test", help="the shard split to predict (default %(default)s)")
    pr.add_argument("--inputs", default=None, metavar="CSV",
                    help="raw pairs instead of shards: a CSV with columns id,image,text (image paths relative to it)")
    pr.add_argument("--image", default=None, help="one raw pair instead of shards: its image file (with --text)")
    pr.add_argument("--text", default=None, help="the text of the --image pair")
    pr.add_argument("--data", default=None, metavar="DATA_ROOT",
                    help="raw pairs instead of shards: the unlabelled pairs of a course-layout folder")
    pr.add_argument("--format", default=None, choices=["probs", "course"],
                    help="probs: id,tag and one prob_<label> column per class; course: guid,tag "
                         "(default: course for a shard split, probs for raw pairs)")
    pr.add_argument("--batch-size", type=int, default=64, help="pairs per forward pass (default %(default)s)")
    pr.add_argument("--checkpoint", default="best", help="best | latest | step-NNNNNNN (run dirs only)")
    pr.add_argument("--adjust", action="store_true",
                    help="add per-class logit offsets tuned on the val split for macro-F1 (RUN/logit_offsets.json)")

    c = sub.add_parser("config", help="print the resolved config, or the reference of every key")
    c.add_argument("action", choices=["show", "reference"],
                   help="show: the config after the file and overrides; reference: every key as a markdown table")
    c.add_argument("--config", default=None, help="a YAML config (default: the built-in defaults)")
    c.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=3e-4")

    ab = sub.add_parser("ablate", help="train text-only, image-only and both; tabulate their val metrics")
    ab.add_argument("--config", required=True, help="the YAML config every variant starts from")
    ab.add_argument("--run-dir", default=None, help="default: runs/<config name>-ablate")
    ab.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=4")

    sw = sub.add_parser("sweep", help="train every combination of --grid values (resumable), ranked by a val metric")
    sw.add_argument("--config", required=True, help="the YAML config every point starts from")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="repeat for more keys")
    sw.add_argument("--run-dir", default=None, help="default: runs/<config name>-sweep")
    sw.add_argument("--metric", default=None, help="accuracy | macro_f1 | weighted_f1 (default: train.best_metric)")
    sw.add_argument("--cv", type=int, default=0, metavar="K",
                    help="score every point by K-fold cross-validation (its mean) instead of the val split")
    sw.add_argument("overrides", nargs="*", help="dotted config overrides applied to every point")
    add_cv_parser(sub)

    rp = sub.add_parser("report", help="compare runs side by side (and write each run's plots and report.md)")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs, or ablation/sweep dirs holding runs")
    rp.add_argument("--out", default="comparison.md", help="the markdown file to write")

    d = sub.add_parser("demo", help="the whole job on a built-in synthetic dataset, on the CPU")
    d.add_argument("--out", default="msa-dist-demo", help="folder for the data, shards, run and predictions "
                   "(default %(default)s)")
    d.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=2")

    ex = sub.add_parser("export", help="write a run's model as a portable folder (safetensors, config, tokenizer, card)")
    ex.add_argument("--run", required=True, help="the --run-dir of a `msa-dist train`")
    ex.add_argument("--out", required=True, help="the folder to write (new or empty)")
    ex.add_argument("--checkpoint", default="best", help="best | latest | step-NNNNNNN (default %(default)s)")
    ex.add_argument("--push-to-hub", default=None, metavar="REPO",
                    help="then upload the folder to this Hugging Face model repo (needs huggingface_hub and a login)")

    add_bench_parser(sub)
    return p


def _run(args) -> int:
    if args.command == "shards":
        from msa_dist.data.shards import build_shards, print_build_summary, print_verify_summary, verify_shards
        from msa_dist.engine.display import console
        if args.shards_command == "build":
            manifest = build_shards(args.data_root, args.out, val_fraction=args.val_fraction, seed=args.seed,
                                    shard_size=args.shard_size, strict=args.strict, labels_file=args.labels,
                                    split_name=args.split, image_size=args.image_size,
                                    jpeg_quality=args.jpeg_quality, console=console)
            print_build_summary(manifest, console)
        elif args.shards_command == "show":
            from msa_dist.data.show import print_samples, show_samples
            print_samples(show_samples(args.shard_dir, args.split, args.n), args.split, console)
        elif args.shards_command == "index":
            from msa_dist.data.indexer import index_shard_set
            counts = index_shard_set(args.shard_dir)
            console.print(f"indexed {args.shard_dir}: " + ", ".join(f"{k} {v} samples" for k, v in counts.items()))
        elif args.shards_command == "serve":
            from msa_dist.data.serve import make_server
            server = make_server(args.shard_dir, args.host, args.port)
            console.print(f"serving {args.shard_dir} at http://{args.host}:{server.server_address[1]} (Ctrl-C stops)")
            with server:
                server.serve_forever()
        else:
            print_verify_summary(verify_shards(args.shard_dir), console)
        return 0
    if args.command == "train":
        from pathlib import Path

        from msa_dist.config import load_config
        from msa_dist.engine.runtime import read_env
        from msa_dist.engine.trainer import train
        cfg = load_config(args.config, args.overrides)
        run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
        summary = train(cfg, run_dir, resume=args.resume)
        if read_env(cfg.backend.device).is_main and summary["status"] == "finished":
            from msa_dist.experiments.report import write_run_report
            write_run_report(run_dir)  # confusion_matrix.png, curves.png, report.md
        return 0 if summary["status"] in ("finished", "preempted") else 1
    if args.command == "evaluate":
        from msa_dist.engine.display import print_metrics
        from msa_dist.engine.inference import evaluate, run_shards
        metrics = evaluate(args.run, run_shards(args.run, args.shards), args.split, args.checkpoint, adjust=args.adjust)
        adjusted = ", logit offsets tuned on val" if args.adjust else ""
        print_metrics(metrics, f"{args.split} metrics ({args.checkpoint} checkpoint of {args.run}{adjusted})")
        return 0
    if args.command == "predict":
        from msa_dist.predict_raw import run_predict_command
        return run_predict_command(args)
    if args.command == "export":
        from msa_dist.export import run_export_command
        return run_export_command(args)
    if args.command == "config":
        import yaml

        from msa_dist.config import describe_fields, load_config, to_dict
        if args.action == "show":
            print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
        else:
            print("| key | default | meaning |\n|---|---|---|")
            for key, default, doc in describe_fields():
                print(f"| `{key}` | `{default}` | {doc} |")
        return 0
    if args.command in ("ablate", "sweep"):
        from pathlib import Path

        from msa_dist.config import load_config
        cfg = load_config(args.config, args.overrides)
        run_dir = args.run_dir or str(Path("runs") / f"{Path(args.config).stem}-{args.command}")
        if args.command == "ablate":
            from msa_dist.experiments.ablate import run_ablation
            run_ablation(cfg, run_dir)
        else:
            from msa_dist.experiments.sweep import parse_grid, run_sweep
            run_sweep(cfg, parse_grid(args.grid), run_dir, args.metric, cv_folds=args.cv)
        return 0
    if args.command == "cv":
        from msa_dist.experiments.cv_command import run_cv_command
        return run_cv_command(args)
    if args.command == "report":
        from msa_dist.experiments.report import compare_runs
        compare_runs(args.run_dirs, args.out)
        return 0
    if args.command == "demo":
        from msa_dist.demo import run_demo
        run_demo(args.out, args.overrides)
        return 0
    if args.command == "bench":
        from msa_dist.bench.command import run_bench
        return run_bench(args)
    raise AssertionError(args.command)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `msa-dist` and `python -m msa_dist`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    # Overrides may come between options (`--config F a.b=1 --run-dir D`); the deepspeed
    # launcher adds --local_rank=N anywhere. Everything else unknown is an error.
    extras = [x for x in extras if not x.startswith(("--local_rank", "--local-rank"))]
    if extras and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        with process_group_scope():  # the one owner of the process group: left when the command ends
            return _run(args)
    except MsaDistError as exc:
        print(f"msa-dist: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("msa-dist: interrupted", file=sys.stderr)
        return 130
