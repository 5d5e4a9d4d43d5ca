"""Training curves as a picture: loss and accuracy against epoch, train and validation.

matplotlib is optional (``pip install "xprop[plot]"``). It is imported only
when a picture is drawn, and only through its object-oriented API with the
Agg canvas: no pyplot, no global backend switch, no display needed, so it
works headless and leaves the backend of an interactive session alone.
"""

from __future__ import annotations

from pathlib import Path

from .io import write_atomic

__all__ = ["PLOT_HINT", "plot_history", "plot_sweep"]

PLOT_HINT = 'pip install "xprop[plot]"'


def _series(values):
    """Epoch values with None (no validation, regression net) kept out."""
    return [v for v in values if v is not None]


def plot_history(history, path, title: str | None = None) -> Path:
    """Draw ``history`` into a PNG: loss (left) and accuracy (right) against epoch.

    Parameters
    ----------
    history : xprop.History or dict
        ``epoch``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` lists,
        one entry per epoch; ``None`` entries (no validation data, or no
        accuracy for a regression net) leave that curve out.
    path : str or Path
        The PNG to write.
    title : str, optional
        Figure title, e.g. the architecture.

    Returns
    -------
    Path

    Raises
    ------
    ImportError
        matplotlib is not installed (the message says how to install it).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"drawing curves needs matplotlib: {PLOT_HINT}") from exc

    h = history if isinstance(history, dict) else history.to_dict()
    epochs = list(h["epoch"])
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    panels = ((ax_loss, "loss", "loss", "val_loss"), (ax_acc, "accuracy", "accuracy", "val_accuracy"))
    for ax, label, train_key, val_key in panels:
        drawn = False
        for key, name, style in ((train_key, "train", "-o"), (val_key, "validation", "-s")):
            values = _series(h.get(key, []))
            if len(values) == len(epochs) and values:
                ax.plot(epochs, values, style, markersize=3, label=name)
                drawn = True
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    path = Path(path)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"))   # never a half-drawn file
    return path


def plot_sweep(rows, path, metric="val_accuracy", swept=("layers", "batch_size", "lr", "weight_decay", "momentum"),
               title: str | None = None) -> Path:
    """Draw a sweep's metric against each setting it varied: one panel per swept setting.

    Every combination is one point at its value of the panel's setting, its
    mean over seeds, with the spread over seeds (one standard deviation) as an
    error bar; combinations whose every seed diverged are left out. Numeric
    settings spanning a factor of 10 or more (learning rates) get a log axis.

    Parameters
    ----------
    rows : list of dict
        :func:`xprop.sweep.summarize` rows (``<metric>_mean``, ``<metric>_std``
        and the swept settings).
    path : str or Path
        The PNG to write.
    metric : str
        ``"val_accuracy"``, ``"val_loss"``, ``"test_accuracy"``, ...
    swept : sequence of str
        Settings to draw a panel for; only those with more than one value get one.

    Raises
    ------
    ImportError
        matplotlib is not installed (the message says how to install it).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"drawing a sweep needs matplotlib: {PLOT_HINT}") from exc

    def text(v):
        return "-".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)

    live = [r for r in rows if r.get(f"{metric}_mean") is not None]
    panels = [s for s in swept if len({text(r[s]) for r in rows}) > 1] or [swept[0]]
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, name in zip(axes, panels):
        values = sorted({text(r[name]) for r in rows},
                        key=lambda t: (0, float(t)) if t.replace(".", "", 1).replace("e-", "", 1).isdigit()
                        else (1, t))
        numeric = all(isinstance(r[name], (int, float)) for r in rows)
        positive = numeric and all(r[name] > 0 for r in rows)
        log = positive and max(r[name] for r in rows) >= 10 * min(r[name] for r in rows)
        for r in live:
            x = r[name] if numeric else values.index(text(r[name]))
            ax.errorbar([x], [r[f"{metric}_mean"]], yerr=[r.get(f"{metric}_std") or 0.0], fmt="o",
                        markersize=4, capsize=3, alpha=0.7)
        if log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel(metric.replace("_", " ") + " (mean ± sd over seeds)")
        ax.grid(True, alpha=0.3)
        if not live:
            ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    path = Path(path)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"))
    return path
