"""Training curves as a picture: loss and accuracy against epoch, train and validation.

matplotlib is optional (``pip install "xprop[plot]"``). It is imported only
when a picture is drawn, and only through its object-oriented API with the
Agg canvas: no pyplot, no global backend switch, no display needed, so it
works headless and leaves the backend of an interactive session alone.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PLOT_HINT", "plot_history"]

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
    fig.savefig(path, format="png")
    return path
