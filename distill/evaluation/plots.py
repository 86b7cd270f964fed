"""ROC and CMC curves of evaluation reports as PNG files (through :mod:`distill.plotting`, fsd's one PNG writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.plotting import save_png, subplots

__all__ = ["plot_cmc", "plot_roc"]


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> None:
    """ROC curves on a log-FAR axis, written atomically as PNG.

    Args:
        curves: (far, tar) of each curve, by legend name.
        path: The PNG to write.
        title: The figure's title.
    """
    fig, ax = subplots(figsize=(5, 4), dpi=120)
    for name, (far, tar) in curves.items():
        positive = far > 0
        ax.plot(far[positive], tar[positive], label=name or None)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(curves):
        ax.legend(loc="lower right")
    save_png(fig, path)


def plot_cmc(curves: dict[str, np.ndarray], path: str | Path, title: str = "CMC") -> None:
    """CMC curves (identification rate against rank), written atomically as PNG.

    Args:
        curves: The identification rate at ranks 1…k of each curve, by legend name.
        path: The PNG to write.
        title: The figure's title.
    """
    fig, ax = subplots(figsize=(5, 4), dpi=120)
    for name, cmc in curves.items():
        ax.plot(np.arange(1, len(cmc) + 1), cmc, marker=".", label=name or None)
    if not any(len(c) for c in curves.values()):
        ax.text(0.5, 0.5, "no query has a same-label neighbour", ha="center", va="center", transform=ax.transAxes)
    lowest = min((float(np.min(c)) for c in curves.values() if len(c)), default=0.0)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.005)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(curves):
        ax.legend(loc="lower right")
    save_png(fig, path)
