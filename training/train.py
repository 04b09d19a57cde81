"""``audioclust-train``: train encoders (and, later, clustering heads) on unlabelled audio.

    audioclust-train ssl --method byola|msn|slicer --data DIR --out DIR [--epochs N]

Runs unchanged on one CPU process and under ``torchrun --nproc_per_node N`` (one process
per GPU, or several CPU processes with gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from audioclust.models.cli import run_command
from audioclust.models.config import build_config
from audioclust.models.encoders import ENCODERS
from audioclust.training.datasets import AudioFolder
from audioclust.training.ssl.trainer import SSLConfig, train_ssl

PROG = "audioclust-train"


def _add_ssl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ssl",
        help="self-supervised encoder training (BYOL-A, MSN, SLICER)",
        description=(
            "Train an audio encoder without labels. Writes encoder.safetensors (frontend + "
            "normalisation + encoder: what every other command takes), snapshots in "
            "checkpoints/, state.safetensors for --resume, history.json and loss.png. "
            "Settings come from the defaults, then --config (its [ssl] table), then flags."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--method", choices=("byola", "msn", "slicer"), help="SSL method "
                   "(default byola)")
    p.add_argument("--data", required=True, type=Path, help="folder of audio clips (any labels "
                   "are ignored)")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--epochs", type=int, help="passes over the data (default 30)")
    p.add_argument("--config", type=Path, help="TOML/YAML file with an [ssl] table")
    p.add_argument("--encoder", choices=sorted(ENCODERS), help="architecture (default: "
                   "audiontt; vit for MSN)")
    p.add_argument("--batch-size", type=int, help="clips per step and process")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the method's)")
    p.add_argument("--crop-frames", type=int, help="training crop length in frames (10 ms)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints")
    p.add_argument("--threads", type=int, help="torch threads per process (0: default)")
    p.add_argument("--cache-dir", help="log-mel cache folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.safetensors")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_ssl)


def _ssl(args: argparse.Namespace) -> int:
    overrides = {
        "method": args.method,
        "epochs": args.epochs,
        "encoder": args.encoder,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "crop_frames": args.crop_frames,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "threads": args.threads,
        "cache_dir": args.cache_dir,
    }
    if args.method == "msn" and args.encoder is None:
        overrides["encoder"] = "vit"  # MSN masks patch tokens: it needs the ViT
    config = build_config(SSLConfig, args.config, overrides, section="ssl")
    data = AudioFolder(args.data)
    rank = int(os.environ.get("RANK", "0"))
    log = (lambda s: None) if rank else (lambda s: print(s, file=sys.stderr))
    log(f"{config.method} ({config.encoder}) on {len(data)} clips from {args.data}, "
        f"{config.epochs} epochs")
    result = train_ssl(config, data, args.out, resume=args.resume, progress=not args.quiet,
                       log=log)
    if rank == 0:
        summary = {
            "encoder": str(result.encoder_path),
            "epochs_run": result.epochs_run,
            "seconds": round(result.seconds, 1),
            "clips_per_second": round(result.clips_per_second, 1),
            "final_loss": result.final_loss,
        }
        if args.json:
            print(json.dumps(summary))
        else:
            log(f"done in {summary['seconds']} s ({summary['clips_per_second']} clips/s); "
                f"encoder: {result.encoder_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train audioclust encoders on unlabelled audio."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_ssl(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
