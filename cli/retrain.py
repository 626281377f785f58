"""``kilotune retrain``: the exported configuration on all chosen images, tested once per seed."""

from __future__ import annotations

import argparse

from kilotune.cli.options import add_option, argument
from kilotune.search.checks import readable_file, whole_number, writable_directory
from kilotune.search.settings import RunOptions
from kilotune.training.config import RetrainOptions
from kilotune.subset.files import count_of


def register_retrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrain", help="train an export on all chosen images; test accuracy")
    p.add_argument("export", type=argument(readable_file), help="JSON written by `kilotune export`")
    p.add_argument("--seeds", type=argument(whole_number(1)), default=RetrainOptions.seeds, help="runs with seeds config.seed, config.seed+1, ... (default: %(default)s)")
    add_option(p, RunOptions, "data_dir")
    add_option(p, RunOptions, "subset", check=readable_file, help="the study's subset file where it is not at the exported path (same checksum required)")
    p.add_argument("--tta", action="store_true", help="also report accuracy with horizontal-flip test-time augmentation")
    p.add_argument("--snapshots", type=argument(whole_number(0)), default=RetrainOptions.snapshots, help="also report a snapshot ensemble of K epochs near the end (default: %(default)s, off)")
    epochs = p.add_mutually_exclusive_group()
    epochs.add_argument("--epochs", type=argument(whole_number(1)), help="override the config's epochs (an ensemble's: each member's)")
    epochs.add_argument("--total-epochs", type=argument(whole_number(1)),
                        help=f"the epochs of all models together: an ensemble trains the members that get {RetrainOptions.min_member_epochs} each (at least one)")
    p.add_argument("--out-dir", type=argument(writable_directory), help="models and results.json go here (default: retrain-<study>-<trial>/)")
    p.set_defaults(func=run_retrain)


def run_retrain(args: argparse.Namespace) -> int:
    from kilotune.search.export import read_export, validation_text
    from kilotune.workers.api import retrain

    export = read_export(args.export)
    p = export["provenance"]
    out_dir = args.out_dir or f"retrain-{p['study']}-{p['trial']}" + ("-ensemble" if "ensemble" in export else "")
    results = retrain(
        export, seeds=args.seeds, tta=args.tta, snapshots=args.snapshots, out_dir=out_dir, epochs=args.epochs, total_epochs=args.total_epochs,
        data_dir=args.data_dir, subset=args.subset,
    )  # fmt: skip  (kilotune.retrain() in Python)
    if "ensemble" in export:
        for i, m in enumerate(results["members"], 1):
            tta = f", with flip TTA {m['tta_test_accuracy']:.4f}" if "tta_test_accuracy" in m else ""
            print(f"member {i} (trial {m['trial'] if m['trial'] is not None else '-'}, seed {m['seed']}, weight {m['weight']}): "
                  f"test accuracy {m['test_accuracy']:.4f}{tta}")
        if (shape := results.get("shape")) and shape["members_trained"] < shape["members_exported"]:
            print(f"{shape['members_trained']} of {shape['members_exported']} members trained: {shape['total_epochs']} epochs in all "
                  f"give each member at least {shape['min_member_epochs']} only so (retrain --epochs E trains them all)")
        flipped = sum(results["flip_tta"])
        tta = "" if not flipped else " with flip TTA" if flipped == len(results["flip_tta"]) else f" with flip TTA for {flipped} trained with flips"
        print(f"ensemble of {count_of(len(results['members']), 'member')}{tta}: "
              f"test accuracy {results['ensemble_test_accuracy']:.4f} ({results['total_epochs']} epochs in all); "
              f"one predictor: {out_dir}/ensemble.keras (kilotune.load_predictor)")
    for key, label in (("test_accuracy", "test accuracy"), ("tta_test_accuracy", "with flip TTA"), ("snapshot_test_accuracy", "snapshot ensemble")):
        if "ensemble" not in export and key in results and results[key]["mean"] is not None:
            s = results[key]
            print(f"{label}: {s['mean']:.4f} ± {s['std']:.4f} over {count_of(len(s['values']), 'seed')}")
    print(f"wrote {out_dir}/results.json (the search's validation accuracy was {validation_text(p)})")
    return 0


REGISTER = [register_retrain]
