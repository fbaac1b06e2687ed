"""What a change did, as one Markdown document for a pull request: first whether each mode's accuracy
change is real or noise (base against head on the same images: exact McNemar on the images that flipped,
Holm-corrected across modes), then the params, metrics and plots that differ between two revisions, from
the real `dvc params diff`, `dvc metrics diff` and `dvc plots diff`.

    python -m stages.report [BASE] [HEAD] [-o report.md] [--json review.json]
    python -m stages.report --seeds [--json seeds.json]
    python -m stages.report --verdict REV [REV ...] [--all-experiments] [--json verdict.json]

BASE defaults to the merge base of `main` (or `origin/main`) with HEAD; HEAD defaults to the workspace.
Changed images are written beside the report, in `<report stem>_files/`, and linked relatively; --json
writes the review as data: for each mode flipped_to_right, flipped_to_wrong, p, p_holm and real.
Not a DVC stage: it reads git-tracked metrics, predictions and plots only, so it needs no `dvc pull`.

--seeds: the accuracy of each mode over the seeds DVC ran as experiments: queue them with
`dvc exp run --queue -S 'train.seed=range(0,3)'`, run them with `dvc queue start`, then
`python -m stages.report --seeds` prints the number of seeds, the mean accuracy, its standard deviation
and the 95% interval of the mean (Student t), read from `dvc exp show --json`.

--verdict: compare's paired verdict across revisions or DVC experiments (by name, or --all-experiments:
HEAD and each of its finished experiments): each `<revision>:<mode>` a candidate, all on the same
reporting images; prints the tied, the recommended (the cheapest: by latency_ms when the backbones
differ, else by train seconds) and the worse ones (--json FILE: as data).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transfer.core.errors import UserError
from transfer.core.files import atomic_path, write_json, write_text
from transfer.core.stage import run_main
from transfer.review.cross_verdict import cross_verdict, resolve, verdict_markdown
from transfer.review.dvc_diff import MAX_CHARS, check_repository, check_revision, default_base, dvc
from transfer.review.report import build_report, check_output, files_dir
from transfer.review.seeds import seeds_text, summarize

__all__ = ["MAX_CHARS", "files_dir", "main", "parse_args"]  # MAX_CHARS, files_dir: what the tests read here


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", help="the revision before the change (default: merge base with main)")
    parser.add_argument("head", nargs="?", help="the revision after it (default: the workspace)")
    parser.add_argument("-o", "--output", default="report.md", help="the Markdown file (default: report.md)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write the review (or with --seeds, the seeds; with --verdict, the verdict) as JSON")
    parser.add_argument("--seeds", action="store_true",
                        help="print each mode's accuracy over the seeds run as DVC experiments, not the report")
    parser.add_argument("--verdict", nargs="*", metavar="REV",
                        help="print one paired verdict over every mode of these revisions or DVC experiments")
    parser.add_argument("--all-experiments", action="store_true",
                        help="with --verdict: HEAD and every finished experiment of it too")
    return parser.parse_args(argv)


def seeds_main(args: argparse.Namespace) -> None:
    if args.base or args.head:
        raise UserError("--seeds reads the experiments of HEAD: name no revision")
    summary = summarize(json.loads(dvc("exp", "show", "--json", revs=[]) or "[]"))
    if args.json:
        check_output(Path(args.json), files=False)
        write_json(args.json, summary)
    print(seeds_text(summary))


def verdict_main(args: argparse.Namespace) -> None:
    if args.base or args.head or args.seeds:
        raise UserError("--verdict names its revisions after it: --verdict REV [REV ...] (no BASE HEAD, no --seeds)")
    if not args.verdict and not args.all_experiments:
        raise UserError("--verdict: name the revisions or experiments to compare, or add --all-experiments")
    revisions, notes = resolve(args.verdict, args.all_experiments)
    if args.json:
        check_output(Path(args.json), files=False)
    data = cross_verdict(revisions, notes)
    if args.json:
        write_json(args.json, data)
    print(verdict_markdown(data), end="")


@run_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_repository()
    if args.verdict is not None:
        return verdict_main(args)
    if args.all_experiments:
        raise UserError("--all-experiments goes with --verdict")
    if args.seeds:
        return seeds_main(args)
    base = check_revision(args.base) if args.base else default_base()
    head = check_revision(args.head) if args.head else None
    output = Path(args.output)
    files = files_dir(output)
    check_output(output)
    if args.json:
        check_output(Path(args.json), files=False)
    with atomic_path(files) as tmp_files:  # the images first, then the report: nothing half-written
        tmp_files.mkdir()
        text, review = build_report(base, head, tmp_files)
    if args.json:
        write_json(args.json, review)
    write_text(output, text)
    print(f"report: {output} ({text.splitlines()[0]})", file=sys.stderr)


if __name__ == "__main__":
    main()
