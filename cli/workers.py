"""``kilotune train``, ``worker``, ``run`` and ``dashboard`` (``retrain`` is in cli/retrain.py)."""

from __future__ import annotations

import argparse

from kilotune.cli.options import add_option, add_study, add_study_options, argument, given
from kilotune.cli.retrain import REGISTER as RETRAIN
from kilotune.search.checks import readable_file, real, whole_number, writable_file
from kilotune.search.settings import RunOptions, StudySettings
from kilotune.subset.files import count_of


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one configuration and print its test accuracy")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--config", type=argument(readable_file), help="TrainConfig JSON (or an export); default: the built-in defaults")
    what.add_argument("--preset", help="a known good configuration by name (see README)")
    add_option(p, RunOptions, "dataset")
    add_option(p, RunOptions, "data_dir")
    images = p.add_mutually_exclusive_group()
    images.add_argument("--subset", type=argument(readable_file), help="train on this subset file (e.g. a study's); default: --train-size random images")
    images.add_argument("--train-size", type=argument(whole_number(1)), default=1000, help="class-balanced random images to train on (default: %(default)s)")
    add_option(p, StudySettings, "val_fraction", check=real(0, 1, high_open=True),
               help="stratified hold-out for validation; 0 trains on every image (default: %(default)s)")
    p.add_argument("--epochs", type=argument(whole_number(1)), help="override the config's epochs")
    p.add_argument("--seed", type=argument(whole_number(0)), help="override the config's seed")
    p.add_argument("--save", type=argument(writable_file), help="write the trained model here (.keras)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from kilotune.search.presets import PRESETS, check_presets
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.splits import class_balanced_sample
    from kilotune.subset.subsetfile import load_subset
    from kilotune.training.config import TrainConfig

    if args.preset is not None:
        check_presets([args.preset])
    config = TrainConfig.from_json(args.config) if args.config else PRESETS[args.preset] if args.preset else TrainConfig()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    config = config.replace(**overrides)
    dataset = load_dataset(args.dataset, args.data_dir)
    if args.subset:
        chosen = load_subset(args.subset, dataset).indices
    else:
        if args.train_size % dataset.num_classes:
            raise ValueError(f"--train-size={args.train_size} must be a positive multiple of {dataset.num_classes} classes")
        chosen = class_balanced_sample(dataset.y_train, args.train_size // dataset.num_classes, config.seed)
    from kilotune.training.data import holdout_data  # Keras: after the checks and the data
    from kilotune.training.train import evaluate, train

    data = holdout_data(dataset, chosen, args.val_fraction, config.seed)
    validating = f", validating on {len(data.x_val)}" if len(data.x_val) else ", no validation hold-out"
    print(f"training {config.arch} on {len(data.x_train)} {dataset.name} images{validating}")
    result = train(config, data, verbose=1)
    if result.status == "diverged":
        print(f"diverged after {count_of(len(result.history), 'epoch')} (loss became NaN or infinite)")
        return 1
    accuracy = evaluate(result, dataset.x_test, dataset.y_test)
    validation = f"validation accuracy {result.val_accuracy:.4f}  " if len(data.x_val) else ""
    print(f"{validation}test accuracy {accuracy:.4f}  ({result.params:,} parameters)")
    if args.save:
        result.model.save(args.save)
    return 0


def register_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="pull trials from a study and train them")
    add_study(p)
    p.add_argument("--worker-id", help="a name for this worker, recorded on its trials")
    p.add_argument("--max-trials", type=argument(whole_number(1)), help="stop after this many trials (default: until the study's budget is spent)")
    add_option(p, RunOptions, "data_dir")
    add_option(p, RunOptions, "subset", check=readable_file, help="the study's subset file (default: the recorded path, else this host's cache, else the copy the study carries)")
    p.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from kilotune.search.storage import storage_url
    from kilotune.workers.process import serve

    return serve(args.study, storage_url(args.storage), worker_id=args.worker_id, data_dir=args.data_dir, subset=args.subset,
                 max_trials=args.max_trials)  # fmt: skip


def register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the main job: a local search, then the best config")
    add_study_options(p, run=True)
    p.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    import sys

    from kilotune.workers.api import WorkersFailed, run

    try:
        run(**given(args))  # kilotune.run() in Python
    except WorkersFailed as e:
        print(f"kilotune run: {e}", file=sys.stderr)
        return 1
    return 0


def register_dashboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the storage")
    add_option(p, RunOptions, "storage")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=argument(whole_number(1, 65535)), default=8080, help="port (default: %(default)s)")
    p.set_defaults(func=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard, given the storage through the environment: on ``optuna-dashboard URL``'s
    command line, `ps` and `docker inspect` would show the database password.

    Served as optuna-dashboard's ``run_server`` serves it (its WSGI app on wsgiref), but the
    port is bound before the one line that says where: a port in use is an error, not a
    "Listening on" before a failure. Each request is still logged to stderr.
    """
    import socket
    from wsgiref.simple_server import WSGIServer, make_server

    from optuna_dashboard import wsgi

    from kilotune.search.storage import open_storage, redact, storage_url

    server_class = type("WSGIServerIPv6", (WSGIServer,), {"address_family": socket.AF_INET6}) if ":" in args.host else WSGIServer
    try:
        server = make_server(args.host, args.port, None, server_class)  # the app once the storage is open
    except OSError as e:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (give another --port, or --host)") from None
    with server:
        url = storage_url(args.storage)
        server.set_app(wsgi(open_storage(url)))
        print(f"dashboard of {redact(url)} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
        server.serve_forever()
    return 0


REGISTER = [register_train, register_worker, register_run, register_dashboard, *RETRAIN]
