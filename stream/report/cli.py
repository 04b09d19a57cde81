"""``audioclust-report``: one self-contained HTML page to see and hear the clusters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audioclust.models.cli import EXIT_ERROR, HelpFormatter, UserError, run_command
from audioclust.models.config import build_config

__all__ = ["main"]

PROG = "audioclust-report"

EPILOG = """\
audio: each --audio is a file or folder, matched to the streams named by its path (as
  audioclust-stream --source file names them; a path relative to another directory
  matches by its trailing components), or ID=PATH for a stream of any id (Kafka
  streams, the microphone). Streams without audio get a timeline, no snippets.
size: the page embeds its snippets (Ogg Vorbis, about 5 KB per second of 16 kHz audio,
  and a ~7 KB spectrogram each), at most --snippets for each of the --max-clusters
  largest clusters and for the novel windows, whatever the length of the recordings:
  about 12 KB per 1 s snippet, 4.5 MB at the defaults. Timelines are binned into at most
  --timeline-bins stretches, and only the --max-streams longest streams get one. Lower
  --snippets or --max-clusters for a smaller page.
lines that are not records (bad JSON, missing fields) are skipped with a warning; a
window recorded twice (same stream and seq) counts once, the later record winning.
examples:
  audioclust-stream --source file rec/ --sink jsonl:out.jsonl
  audioclust-report out.jsonl --audio rec/ -o report.html
  audioclust-report kafka.jsonl --audio dev-7=field/dev7.flac -o report.html
exit codes: 0 written, 1 failure or an audio file that could not be read (the page is
still written, without its snippets), 2 bad command line.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Write one self-contained HTML page (no network; audio and images embedded) of\n"
            "the records of audioclust-stream: a summary, cluster sizes over time, a timeline\n"
            "of clusters per stream (novel and drift marked), and for each cluster, largest\n"
            "first, playable snippets cut from the audio with their spectrograms, and its\n"
            "name if enrolled."
        ),
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("records", metavar="RECORDS", help="records of audioclust-stream (JSON lines)")
    p.add_argument("--audio", nargs="+", action="extend", metavar="PATH",
                   help="audio the records came from: files, folders, or ID=PATH")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write")
    p.add_argument("--config", type=Path, help="TOML/YAML file with a [report] table of the "
                   "settings below")
    p.add_argument("--snippets", type=int, help="snippets per cluster (default 6)")
    p.add_argument("--max-clusters", type=int, help="clusters with snippets, largest first; "
                   "the rest get a table row (default 60)")
    p.add_argument("--max-streams", type=int, help="streams with a timeline, longest first "
                   "(default 50)")
    p.add_argument("--snippet-seconds", type=float, help="longest snippet; longer windows are "
                   "cut to their middle (default 4)")
    p.add_argument("--timeline-bins", type=int, help="most stretches per timeline (default 800)")
    p.add_argument("--title", help="page title (default: from the records file name)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


class _Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _run(args: argparse.Namespace) -> int:
    from audioclust.stream.report.build import (
        ReportConfig,
        build_report,
        match_audio,
        write_report,
    )
    from audioclust.stream.report.page import plural
    from audioclust.stream.report.records import RecordsError, read_records

    cfg = build_config(ReportConfig, args.config, {
        "snippets": args.snippets, "max_clusters": args.max_clusters,
        "max_streams": args.max_streams, "snippet_seconds": args.snippet_seconds,
        "timeline_bins": args.timeline_bins, "title": args.title,
    }, section="report")

    def say(message: str) -> None:
        if not args.quiet:
            print(f"{PROG}: {message}", file=sys.stderr)

    def warn(message: str) -> None:
        print(f"{PROG}: warning: {message}", file=sys.stderr)

    try:
        records = read_records(args.records,
                               progress=lambda n: say(f"{args.records}: {n:,} lines read"))
    except RecordsError as exc:
        raise UserError(str(exc)) from exc
    if not records.streams:
        raise UserError(f"{args.records}: no records in {records.lines} lines"
                        + (" (none of them is a record)" if records.skipped else ""))
    say(f"read {plural(records.windows, 'window')} of {plural(len(records.streams), 'stream')}, "
        f"{plural(len(records.clusters), 'cluster')}")
    audio = match_audio(records, args.audio or [])
    report = build_report(records, audio, cfg, progress=say)
    for w in report.warnings:
        warn(w)
    try:
        size = write_report(report, args.output)
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from exc
    say(f"wrote {args.output} ({size / 1e6:.1f} MB): "
        f"{plural(len(records.streams), 'stream')}, "
        f"{plural(len(report.page.clusters), 'cluster card')}, "
        f"{plural(report.snippets, 'snippet')}")
    if args.json:
        print(json.dumps({
            "output": str(args.output), "bytes": size, "streams": len(records.streams),
            "windows": records.windows, "clusters": len(records.clusters),
            "cards": len(report.page.clusters), "snippets": report.snippets,
            "skipped_lines": len(records.skipped), "warnings": report.warnings,
        }))
    if audio.unreadable:
        print(f"{PROG}: error: {audio.unreadable} audio file"
              f"{'s' if audio.unreadable != 1 else ''} could not be read (see above); the "
              "page was written without their snippets", file=sys.stderr)
        return EXIT_ERROR
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(PROG, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
