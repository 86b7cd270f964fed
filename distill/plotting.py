"""The one way fsd makes a PNG: a headless (Agg) figure, laid out, written atomically, then closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featstore.atomic import atomic_path


def subplots(*args: Any, **kwargs: Any):
    """``plt.subplots`` on the Agg backend (no display needed; matplotlib is imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_png(fig: Any, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
