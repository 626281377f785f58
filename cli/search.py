"""``kilotune report`` and ``kilotune export`` (the study commands are in cli/study.py)."""

from __future__ import annotations

import argparse

from kilotune.cli.options import add_study, argument
from kilotune.models.names import ENSEMBLE_SELECTIONS
from kilotune.search.checks import whole_number, writable_file
from kilotune.search.settings import ExportOptions, ReportOptions


def register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a study")
    add_study(p)
    p.add_argument("--out", required=True, type=argument(writable_file), help="HTML file to write, e.g. report.html")
    p.add_argument("--top", type=argument(whole_number(1)), default=ReportOptions.top, help="configurations in the top table (default: %(default)s)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from kilotune.workers.api import report

    path = report(args.study, args.out, storage=args.storage, top=args.top)  # kilotune.report() in Python
    print(f"wrote {path}: report of study {args.study!r}")
    return 0


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the best config with its provenance as JSON")
    add_study(p)
    p.add_argument("--rank", type=argument(whole_number(1)), default=ExportOptions.rank, help="1 = the cross-validated winner, 2 = the runner-up, ... (default: %(default)s)")
    p.add_argument("--out", required=True, type=argument(writable_file), help="JSON file to write, e.g. best.json")
    p.add_argument("--ensemble", type=argument(whole_number(0)), default=ExportOptions.ensemble, metavar="K",
                   help="also write an ensemble of K members around the winner, which retrain trains and saves as one predictor (default: %(default)s, none)")
    p.add_argument("--selection", choices=ENSEMBLE_SELECTIONS, default=ExportOptions.selection,
                   help="how the members are chosen: top (the best cross-validated trials), greedy (ensemble selection on their "
                        "out-of-fold predictions) or seeds (the winner K times) (default: %(default)s)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from kilotune.search.export import validation_text, write_json
    from kilotune.training.config import take_home_epochs
    from kilotune.workers.api import best

    export = best(args.study, storage=args.storage, rank=args.rank, ensemble=args.ensemble, selection=args.selection)
    path = write_json(export, args.out, sort_keys=True)
    p = export["provenance"]
    print(f"wrote {path}: trial {p['trial']} of study {p['study']!r}, validation accuracy {validation_text(p)} "
          f"({export['config']['arch']})")
    if "ensemble" in export:
        e = export["ensemble"]
        members = ", ".join(f"trial {m['trial']}" + (f" x{m['weight']}" if m["weight"] > 1 else "") if m["trial"] is not None
                            else f"seed {m['config']['seed']}" for m in e["members"])  # fmt: skip
        validation = f"; out-of-fold accuracy {e['validation']['ensemble']:.4f} against the winner's {e['validation']['winner']:.4f}" if e["validation"] else ""
        print(f"ensemble ({e['selection']}): {members}{validation}" + (f" ({e['note']})" if e["note"] else ""))
    if "ensemble" in export:
        print(f"retrain it on all chosen images: kilotune retrain {path} --total-epochs T (all members' epochs; or --epochs E, each member's)")
    else:
        print(f"retrain it on all chosen images: kilotune retrain {path} --total-epochs {take_home_epochs(int(export['config']['epochs']))}")
    return 0


REGISTER = [register_report, register_export]
