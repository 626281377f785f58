"""One self-contained HTML report of a study: the best configurations and how the search went.

Every plot is plotly, from ``optuna.visualization`` where Optuna has one, restyled for what
a kilotune study records (docs/study-format.md). plotly.js is inlined once, so the file
opens offline and can be mailed or archived as it is.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from kilotune.search import attrs as keys
from kilotune.search.attrs import CONFIG, PRESET, STATUS, WORKER, WORKER_ID
from kilotune.search.settings import ReportOptions, StudySettings
from kilotune.search.winner import CrossValidated, StudyTrials, cross_validated_best, ranking
from kilotune.subset.files import count_of
from kilotune.models.names import ARCHITECTURES

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How a trial's learning curve looks, by state: finished runs solid, pruned ones dashed.
CURVE_STYLE = {
    TrialState.COMPLETE: dict(color="#1f77b4", dash="solid"),
    TrialState.PRUNED: dict(color="#ff7f0e", dash="dash"),
    TrialState.FAIL: dict(color="#d62728", dash="dot"),
    TrialState.RUNNING: dict(color="#2ca02c", dash="dashdot"),
}


HANDED_BACK = "handed back"


def outcome(trial: FrozenTrial) -> str:
    """How a trial stands, as the report and ``kilotune run`` show it: its state in lower case, but
    "handed back" for a trial a worker took ahead and gave back untrained (FAIL with status
    "returned", outside the budget; its copy is queued or the study's time was up): not a failure."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get(STATUS) == "returned":
        return HANDED_BACK
    return trial.state.name.lower()


@dataclass(frozen=True)
class Section:
    """A titled part of the report: HTML (a table, a note) and/or a plot below it."""

    key: str  # the HTML id
    title: str
    figure: go.Figure | None = None
    body: str = ""  # HTML, already escaped


def write_report(study: optuna.Study, storage: BaseStorage, path: str | Path, *, top: int = ReportOptions.top) -> Path:
    """Writes the report of ``study`` (loaded from ``storage``) to ``path`` (parent directories are created)."""
    path = Path(path)
    text = render_report(study, storage, top=top)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def render_report(study: optuna.Study, storage: BaseStorage, *, top: int = ReportOptions.top) -> str:
    """The report as one HTML document.

    Raises:
        ValueError: if the study has no finished (complete or pruned) trials.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top=}")
    trials, settings = StudyTrials.read(study, storage), StudySettings.from_study(study)
    if not any(t.state in FINISHED for t in trials.search):
        raise ValueError(f"study {study.study_name!r} has no finished trials (complete or pruned) to report yet")
    search = trials_view(study, trials.search)
    ranked = ranking(trials, settings.cv_top_k)[:top]
    sections = [
        Section("top", f"Top {count_of(len(ranked), 'configuration')}", body=top_table(ranked)),
        Section("history", "Optimization history", optuna.visualization.plot_optimization_history(search, target_name="validation accuracy")),
        Section("curves", "Learning curves", learning_curves(search), "<p>Validation accuracy per epoch; pruned trials dashed.</p>"),
        _guarded("importance", "Parameter importances", lambda: parameter_importances(search)),
        Section("arch", "Accuracy by architecture", accuracy_by_architecture(trials.search)),
        pruning_savings(trials.search, settings.epochs),
        Section("workers", "Trials over time per worker", worker_timeline(study, [*trials.search, *trials.folds])),
    ]
    return _page(study, trials, settings, sections)


# --- sections -------------------------------------------------------------------------------


def trials_view(study: optuna.Study, trials: list[FrozenTrial]) -> optuna.Study:
    """``trials`` in an in-memory study for Optuna's plots, numbered 0, 1, ... in their order.

    The search trials alone, for the history and importances: a fold trial trains a configuration
    already searched on another split, so its value would read as a new best, and its parameters
    would count again.
    """
    # Optuna logs every study it creates ("A new study created in memory"): no news to a user.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        view = optuna.create_study(study_name=study.study_name, direction=study.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    view.add_trials(trials)
    return view




def top_table(ranked: list[CrossValidated]) -> str:
    """The best complete trials as an HTML table, ranked as export ranks them (``winner.ranking``):
    the cross-validated ones by their mean over folds (with its standard error), then the rest."""
    if not ranked:
        return "<p class=note>No trial has completed yet.</p>"
    headers = ("rank", "trial", "CV mean", "CV std. error", "folds", "val accuracy (fold 0)", "arch", "key params", "epochs", "status")
    head = "".join(f"<th>{h}</th>" for h in headers)
    rows = []
    for rank, evaluated in enumerate(ranked, 1):
        t = evaluated.trial
        config = t.user_attrs.get(CONFIG, {})
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(t.params.items()) if k != "arch")
        stderr = "-" if evaluated.stderr is None else f"{evaluated.stderr:.4f}"
        arch = config.get("arch", t.params.get("arch", "?")) + (f" (preset {t.user_attrs[PRESET]})" if PRESET in t.user_attrs else "")
        cells = (rank, t.number, f"{evaluated.mean:.4f}", stderr, len(evaluated.values), f"{t.value:.4f}",
                 arch, params, _epochs(t), _status(t))  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    table = f"<table class=top><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if (ahead := ranked[0].kept_over) is not None:
        table += (f"<p class=note>Rank 1 is a warm-start preset within one standard error ({ahead.noise:.4f}) of trial "
                  f"{ahead.trial.number}'s {ahead.mean:.4f}: a preset is a recipe measured at long training, and a "
                  "short trial's lead within the validation split's noise does not displace it.</p>")
    return table


def learning_curves(study: optuna.Study) -> go.Figure:
    """Optuna's intermediate-values plot with one colour and dash per trial state."""
    fig = optuna.visualization.plot_intermediate_values(study)
    states = {f"Trial{t.number}": t.state for t in study.get_trials(deepcopy=False)}
    shown: set[TrialState] = set()
    for trace in fig.data:
        state = states.get(trace.name, TrialState.FAIL)
        style = CURVE_STYLE.get(state, CURVE_STYLE[TrialState.FAIL])
        number = trace.name.removeprefix("Trial")
        trace.update(
            line=style,
            marker=dict(color=style["color"], size=4),
            opacity=0.75,
            legendgroup=state.name,
            name=state.name.lower(),
            showlegend=state not in shown,  # one legend entry per state, not per trial
            hovertemplate=f"trial {number}<br>epoch %{{x}}<br>val accuracy %{{y:.4f}}<extra>{state.name.lower()}</extra>",
        )
        shown.add(state)
    fig.update_layout(title="Learning curves", xaxis_title="epoch", yaxis_title="validation accuracy", showlegend=True)
    return fig


def parameter_importances(study: optuna.Study) -> go.Figure:
    """Optuna's parameter importances (PED-ANOVA by default); needs two complete trials."""
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < 2:
        raise ValueError(f"importances need at least 2 complete trials, the study has {n_complete}")
    return optuna.visualization.plot_param_importances(study)


def accuracy_by_architecture(trials: list[FrozenTrial]) -> go.Figure:
    """A box with every trial's point per architecture, over complete trials."""
    by_arch: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            by_arch.setdefault(t.user_attrs.get(CONFIG, {}).get("arch", t.params.get("arch", "?")), []).append(t)
    order = sorted(by_arch, key=lambda a: (ARCHITECTURES.index(a) if a in ARCHITECTURES else len(ARCHITECTURES), a))
    fig = go.Figure(
        [
            go.Box(
                name=arch,
                y=[t.value for t in by_arch[arch]],
                text=[f"trial {t.number}" for t in by_arch[arch]],
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                hovertemplate="%{text}<br>val accuracy %{y:.4f}<extra>" + arch + "</extra>",
            )
            for arch in order
        ]
    )
    fig.update_layout(title="Validation accuracy by architecture (complete trials)", yaxis_title="validation accuracy", showlegend=False)
    return fig


def pruning_savings(trials: list[FrozenTrial], study_epochs: int | None) -> Section:
    """Epochs that pruning did not spend: per pruned search trial, its budget less the epochs it ran."""
    finished = [t for t in trials if t.state in FINISHED]
    budget = {t.number: int(t.user_attrs.get(CONFIG, {}).get("epochs") or study_epochs or (t.last_step or 0)) for t in finished}
    saved = {t.number: max(0, budget[t.number] - (t.last_step or 0)) for t in finished if t.state == TrialState.PRUNED}
    full, total = sum(budget.values()), sum(saved.values())
    share = 100.0 * total / full if full else 0.0
    summary = (
        f"<p>{len(saved)} of {len(finished)} finished trials were pruned, saving <b>{total}</b> of the "
        f"{full} epochs that training every finished trial to the end would have taken (<b>{share:.1f}%</b>).</p>"
    )
    title = "Epochs saved by pruning"
    if not saved:
        return Section("pruning", title, body=summary)
    fig = go.Figure(go.Bar(x=[f"trial {n}" for n in saved], y=list(saved.values()), marker_color=CURVE_STYLE[TrialState.PRUNED]["color"]))
    fig.update_layout(title=f"Epochs saved per pruned trial (total {total}, {share:.1f}% of {full})", yaxis_title="epochs not run", xaxis_type="category")
    return Section("pruning", title, fig, summary)


def worker_timeline(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure:
    """Optuna's timeline of ``trials`` (search and fold trials) with one row per worker, named as
    ``kilotune run`` names it (``worker_id``, else host:pid), instead of one per trial."""
    fig = optuna.visualization.plot_timeline(trials_view(study, trials))
    worker = {i: worker_name(t) for i, t in enumerate(trials)}
    handed_back = {i for i, t in enumerate(trials) if outcome(t) == HANDED_BACK}
    mixed = [trace for trace in fig.data if trace.name == "FAIL" and handed_back & set(trace.y)]
    if mixed:
        # Handed-back trials are not failures: grey bars of their own, not red FAIL ones.
        fig.data = [trace for trace in fig.data if trace not in mixed]
        failed = _subtrace(mixed[0], lambda n: n not in handed_back, "FAIL", mixed[0].marker.color)
        for part in (failed, _subtrace(mixed[0], lambda n: n in handed_back, HANDED_BACK, "#9e9e9e")):
            if part.y:
                fig.add_trace(part)
    for trace in fig.data:
        trace.update(y=[worker[n] for n in trace.y])
    rows = sorted(set(worker.values()))
    fig.update_layout(title="Trials over time per worker", yaxis=dict(title="worker", type="category", categoryorder="array", categoryarray=rows), barmode="overlay", height=max(320, 120 + 40 * len(rows)))
    return fig


def _subtrace(trace: go.Bar, keep: Callable[[int], bool], name: str, color: str) -> go.Bar:
    """The bars of a timeline trace whose trial numbers ``keep`` accepts, under another legend name."""
    rows = [i for i, number in enumerate(trace.y) if keep(number)]
    pick = lambda values: [values[i] for i in rows]  # noqa: E731
    return go.Bar(name=name, x=pick(trace.x), y=pick(trace.y), base=pick(trace.base), text=pick(trace.text),
                  hovertemplate="%{text}<extra>" + name + "</extra>", orientation="h", marker=dict(color=color),
                  textposition="none")


# --- page -----------------------------------------------------------------------------------


def _guarded(key: str, title: str, make: Callable[[], go.Figure]) -> Section:
    """A section whose plot may not be computable yet; the reason is shown instead. What Optuna
    warns of while making it (importances from few trials) is said beside the plot, not on stderr."""
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            figure = make()
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return Section(key, title, body=f"<p class=note>Not available: {html.escape(str(e))}</p>")
    notes = " ".join(dict.fromkeys(str(w.message) for w in said))  # each once, in order
    return Section(key, title, figure, f"<p class=note>Optuna: {html.escape(notes)}</p>" if notes else "")


def _page(study: optuna.Study, trials: StudyTrials, settings: StudySettings, sections: list[Section]) -> str:
    parts, plots = [], 0
    for s in sections:
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
        parts.append(s.body)
        if s.figure is not None:
            s.figure.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))
            # Inline plotly.js with the first plot only: one copy, and the file works offline.
            parts.append(s.figure.to_html(full_html=False, include_plotlyjs=plots == 0, div_id=f"plot-{s.key}", config={"displaylogo": False}))
            plots += 1
        parts.append("</section>")
    title = f"kilotune report: {study.study_name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f"<body><h1>{html.escape(title)}</h1>{_summary(study, trials, settings)}{''.join(parts)}</body></html>\n"
    )


def _summary(study: optuna.Study, trials: StudyTrials, settings: StudySettings) -> str:
    attrs = study.user_attrs
    winner = cross_validated_best(trials, settings.cv_top_k)
    best = f"{winner.describe()} (trial {winner.trial.number})" if winner else "-"
    rows: list[tuple[str, Any]] = [
        ("dataset", attrs.get(keys.DATASET, "?")),
        ("subset", f"{settings.subset_path} ({settings.subset_checksum[:19]})"),
        ("epochs per trial", settings.epochs),
        ("validation fraction", settings.val_fraction),
        ("sampler / pruner", f"{settings.sampler} / {settings.pruner}"),
        ("budget", settings.budget_text()),
        ("search trials", _counts(trials.search)),
        ("fold trials", _counts(trials.folds) if trials.folds else "none"),
        ("workers", len({worker_name(t) for t in [*trials.search, *trials.folds] if WORKER in t.user_attrs})),
        ("objective", f"mean validation accuracy of the last {count_of(settings.objective_epochs, 'epoch')}"),
        ("best (cross-validated mean ± std. error)", best),
        ("created", attrs.get(keys.CREATED_AT, "?")),
        ("report written", datetime.now(timezone.utc).isoformat(timespec="seconds")),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<section id="summary"><table class=summary>{body}</table></section>'


def _counts(trials: list[FrozenTrial]) -> str:
    """``12: 8 complete, 4 pruned``."""
    outcomes = [outcome(t) for t in trials]
    order = [s.name.lower() for s in TrialState] + [HANDED_BACK]
    return f"{len(trials)}: " + ", ".join(f"{outcomes.count(o)} {o}" for o in order if o in outcomes)


def worker_name(trial: FrozenTrial) -> str:
    """The worker as ``kilotune run`` names it (``--worker-id``), else its host:pid."""
    return str(trial.user_attrs.get(WORKER_ID) or trial.user_attrs.get(WORKER, "(no worker)"))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _epochs(trial: FrozenTrial) -> str:
    planned = trial.user_attrs.get(CONFIG, {}).get("epochs")
    return f"{trial.last_step or 0}/{planned}" if planned else str(trial.last_step or 0)


def _status(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(STATUS, trial.state.name.lower()))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
table.top td:nth-child(8) { font-size: .8rem; color: #444; max-width: 640px; }
table.summary th { color: #555; font-weight: 600; }
.note { color: #666; font-style: italic; }
"""
