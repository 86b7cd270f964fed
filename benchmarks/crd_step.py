"""The cost of one ``crd`` loss step (forward + backward, both sides, negatives drawn), against the same
objective written the plain way, in the same process.

* **fsd**: :class:`distill.losses.crd.ContrastiveRepresentationKD` as the trainer calls it — per-anchor
  other-class negatives (numpy partial shuffle), one (N, B) product per side, NCE and its gradient in one
  pass (:func:`distill.losses.crd.memory_nce`).
* **RepDistiller's layout**: the official ``ContrastMemory`` route — gather the B·(K+1) memory rows
  (``index_select``), ``bmm`` with the anchors, ``exp``, the NCE written term by term, autograd backward —
  with negatives drawn by one ``torch.randperm`` of each anchor's pool.
* **dense autograd**: fsd's previous route — a (B, N) product of a copy of the memory, gather, the same
  written NCE, autograd backward through the product.

All three compute the same values (checked here to 1e-4 relative on the same negatives before timing).
Rounds alternate the three; the figures are medians of per-round ratios of step times (below 1: fsd is
faster). Sizes default to Fashion-MNIST's: N = 60,000 samples, 10 classes, batch 64, K = 16,384, 128-d.

Run from the repository root: python -m benchmarks.crd_step [--rounds 5] (writes benchmarks/crd_step.json
and its section of RESULTS.md)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.results_md import publish
from distill.losses import TrainingContext
from distill.losses.crd import EPS, ContrastiveRepresentationKD

HEADING = "## CRD loss step (benchmarks/crd_step.py)"
HERE = Path(__file__).resolve().parent


def written_nce(scores: torch.Tensor, z: float, num_data: int) -> torch.Tensor:
    """RepDistiller's NCE of exp-scores (B, 1+K), term by term, h = scores / Z, P_n = 1/N."""
    h = scores / z
    noise = (h.shape[1] - 1) / num_data
    log_pos = torch.log(h[:, 0] / (h[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (h[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / h.shape[0]


def randperm_draw(others: dict[int, torch.Tensor], idx: torch.Tensor, labels: torch.Tensor, k: int, g) -> torch.Tensor:
    out = torch.empty((len(idx), k + 1), dtype=torch.long)
    out[:, 0] = idx
    for row, label in enumerate(labels.tolist()):
        pool = others[label]
        out[row, 1:] = pool[torch.randperm(len(pool), generator=g)[:k]]
    return out


def gathered_side(anchor, memory, contrast, tau, z, n) -> torch.Tensor:
    rows = torch.index_select(memory, 0, contrast.view(-1)).detach().view(*contrast.shape, -1)
    return written_nce(torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / tau), z, n)


def dense_side(anchor, memory, contrast, tau, z, n) -> torch.Tensor:
    return written_nce(torch.exp((anchor @ memory.detach().clone().t()).gather(1, contrast) / tau), z, n)


def _setup(n: int, classes: int, k: int, dim: int) -> ContrastiveRepresentationKD:
    labels = np.arange(n) % classes
    store = types.SimpleNamespace(
        shape=types.SimpleNamespace(num_samples=n, dim=dim, num_views=1), labels=lambda: labels
    )
    loss = ContrastiveRepresentationKD(negatives=k)
    loss.setup(TrainingContext(store, dim, dim, n, torch.device("cpu"), seed=0))
    loss.normaliser.fill_(float(n))  # a fixed Z, as after the first batch
    return loss


def measure(n: int, classes: int, batch: int, k: int, rounds: int, steps: int, dim: int = 64) -> dict:
    torch.manual_seed(0)
    loss = _setup(n, classes, k, dim)
    labels = torch.arange(n) % classes
    others = {c: torch.from_numpy(rows) for c, rows in loss.sampler.others.items()}  # the same pools as fsd's
    g = torch.Generator().manual_seed(1)
    z_s = torch.randn(batch, dim, requires_grad=True)
    z_t = torch.randn(batch, dim)
    idx = torch.randperm(n, generator=g)[:batch]
    z = float(n)

    def projected():
        return F.normalize(loss.embed_s(z_s), dim=1), F.normalize(loss.embed_t(z_t), dim=1)

    def both_sides(side, v_s, v_t, contrast) -> torch.Tensor:
        """L_s + L_t by one of the plain routes (student anchor on the teacher memory, and back)."""
        return side(v_s, loss.memory_t, contrast, loss.tau, z, n) + side(v_t, loss.memory_s, contrast, loss.tau, z, n)

    def fsd_step() -> float:
        v_s, v_t = projected()
        value = loss.contrast(v_s, v_t, idx, loss.sampler.draw(idx, labels[idx]))
        value.backward()
        return float(value.detach())

    def plain_step(side) -> float:
        v_s, v_t = projected()
        contrast = randperm_draw(others, idx, labels[idx], loss.k, g)
        value = both_sides(side, v_s, v_t, contrast)
        value.backward()
        return float(value.detach())

    # the same numbers on the same negatives, before any timing
    with torch.no_grad():
        v_s, v_t = projected()
        contrast = loss.sampler.draw(idx, labels[idx])
        values = {
            name: float(both_sides(side, v_s, v_t, contrast))
            for name, side in (("gather", gathered_side), ("dense", dense_side))
        }
        values["fsd"] = float(loss.contrast(v_s, v_t, idx, contrast))
    assert all(math.isclose(v, values["gather"], rel_tol=1e-4) for v in values.values()), values

    routes = {
        "fsd": fsd_step,
        "repdistiller_gather": lambda: plain_step(gathered_side),
        "dense_autograd": lambda: plain_step(dense_side),
    }
    times: dict[str, list[float]] = {name: [] for name in routes}
    for step in routes.values():
        step()  # warm-up
    for _ in range(rounds):
        for name, step in routes.items():
            started = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - started) / steps)
    ratio = {
        f"fsd_over_{name}": statistics.median(f / b for f, b in zip(times["fsd"], times[name], strict=True))
        for name in routes
        if name != "fsd"
    }
    return {
        **ratio,
        "step_s": {name: statistics.median(values) for name, values in times.items()},
        "sizes": {"n": n, "classes": classes, "batch": batch, "negatives": loss.k, "feat_dim": loss.feat_dim},
        "rounds": rounds,
        "steps": steps,
    }


def section(results: dict) -> str:
    r, s, sizes = results["crd"], results["crd"]["step_s"], results["crd"]["sizes"]
    return (
        f"{HEADING}\n\n"
        f"`python -m benchmarks.crd_step` on {results['when']}, CPU, {results['threads']} torch thread(s), load "
        f"average {results['load']} at the start. One `crd` step (both sides, forward + backward, negatives "
        f"drawn) at N = {sizes['n']:,}, {sizes['classes']} classes, batch {sizes['batch']}, K = "
        f"{sizes['negatives']:,}, {sizes['feat_dim']}-d; medians of {r['rounds']} interleaved rounds of "
        f"{r['steps']} steps. Raw numbers: `crd_step.json`.\n\n"
        "| step time | ms | fsd / this |\n|---|---:|---:|\n"
        f"| fsd (`distill.losses.crd`) | {s['fsd'] * 1e3:.0f} | 1.00 |\n"
        f"| RepDistiller's layout (gather B·(K+1) rows, bmm, autograd; randperm negatives) | "
        f"{s['repdistiller_gather'] * 1e3:.0f} | {r['fsd_over_repdistiller_gather']:.2f} |\n"
        f"| dense (B, N) product of a memory copy, autograd (fsd before) | {s['dense_autograd'] * 1e3:.0f} | "
        f"{r['fsd_over_dense_autograd']:.2f} |\n\n"
        "The three give the same loss to 1e-4 on the same negatives (checked before timing). What is left in "
        "fsd's step is two (N, B)·d products per side (scores and the gradient) and the per-anchor draw; on a "
        "GPU the products are microseconds.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes; writes nothing unless --out-dir.")
    parser.add_argument("--out-dir", type=Path, default=None, help="Where crd_step.json/RESULTS.md go (default here).")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    n, batch, k = (2_000, 16, 512) if args.quick else (60_000, 64, 16_384)
    rounds, steps = (1, 1) if args.quick else (args.rounds, args.steps)
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": torch.get_num_threads(),
        "load": [round(v, 2) for v in os.getloadavg()],
        "crd": measure(n, 10, batch, k, rounds, steps),
    }
    out = args.out_dir or HERE
    publish(
        section(results), HEADING, results, out / "crd_step.json", out / "RESULTS.md", not args.quick or args.out_dir
    )


if __name__ == "__main__":
    main()
