"""CRD's memories stay one memory under DDP: two gloo ranks, each updating with its own batch, end with
identical memories holding both ranks' rows (before the fix rank 0's buffer broadcast erased rank 1's) —
``crd-exact``'s student memory, and the official ``crd``'s two memories and its normaliser Z."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N, D, B = 40, 6, 5


def _store() -> SimpleNamespace:
    emb = np.random.default_rng(0).standard_normal((N, 1, D)).astype(np.float32)
    return SimpleNamespace(
        shape=SimpleNamespace(num_samples=N, dim=D),
        num_chunks=1,
        chunk_bounds=lambda chunk: (0, N),
        read_chunk=lambda chunk: (emb, None, None),
    )


def _on_two_ranks(fn, tmp_path) -> None:
    """Run ``fn(rank, port, out)`` on two gloo ranks over a free local port; each rank writes its result."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fn, args=(port, str(tmp_path)), nprocs=2, join=True)


def _rank(rank: int, port: int, out: str) -> None:
    from distill.losses import DistillInputs, TrainingContext
    from distill.losses.crd_exact import StoreBackedCRD as ContrastiveRepresentationKD

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    loss = ContrastiveRepresentationKD(feat_dim=4, negatives=8)
    loss.setup(
        TrainingContext(store=_store(), student_dim=D, teacher_dim=D, num_samples=N, device=torch.device("cpu"), seed=0)
    )
    initial = loss.student_memory.clone()
    sizes = (B, B - 2)  # ranks may hold batches of different sizes
    idx = torch.arange(rank * 20, rank * 20 + sizes[rank])
    z = torch.randn(sizes[rank], D, generator=torch.Generator().manual_seed(rank))
    loss.compute(
        DistillInputs(
            student_embedding=z,
            student_logits=torch.zeros(len(idx), 3),
            labels=torch.zeros(len(idx), dtype=torch.long),
            teacher_embedding=z,
            indices=idx,
        )
    )
    torch.save({"initial": initial, "memory": loss.student_memory}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_student_memory_gathers_every_ranks_rows(tmp_path) -> None:
    _on_two_ranks(_rank, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["memory"], r1["memory"])  # one memory on both ranks
    changed = (r0["memory"] != r0["initial"]).any(dim=1).nonzero().flatten().tolist()
    assert changed == [*range(0, B), *range(20, 20 + B - 2)]  # rank 0's rows and rank 1's rows


def _official_rank(rank: int, port: int, out: str) -> None:
    """RepDistiller's ``crd`` under DDP: both memories and the normaliser Z must stay one on every rank."""
    from distill.losses import DistillInputs, TrainingContext
    from distill.losses.crd import ContrastiveRepresentationKD

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    labels = np.arange(N) % 4
    store = _store()
    store.read_chunk = lambda chunk: (None, labels, None)
    loss = ContrastiveRepresentationKD(feat_dim=4, negatives=8)
    loss.setup(
        TrainingContext(store=store, student_dim=D, teacher_dim=D, num_samples=N, device=torch.device("cpu"), seed=0)
    )
    initial = {name: getattr(loss, name).clone() for name in ("memory_s", "memory_t")}
    sizes = (B, B - 2)
    idx = torch.arange(rank * 20, rank * 20 + sizes[rank])
    z = torch.randn(sizes[rank], D, generator=torch.Generator().manual_seed(rank))
    loss.compute(
        DistillInputs(
            student_embedding=z,
            student_logits=torch.zeros(len(idx), 3),
            labels=torch.from_numpy(labels[idx.numpy()]),
            teacher_embedding=z.flip(1),
            indices=idx,
        )
    )
    state = {"normaliser": loss.normaliser.clone(), **{f"initial_{k}": v for k, v in initial.items()}}
    state.update(memory_s=loss.memory_s, memory_t=loss.memory_t)
    torch.save(state, f"{out}/official{rank}.pt")
    dist.destroy_process_group()


def test_official_crd_keeps_both_memories_and_z_identical_across_ranks(tmp_path) -> None:
    _on_two_ranks(_official_rank, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"official{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["normaliser"], r1["normaliser"]) and (r0["normaliser"] > 0).all()  # Z: the ranks' mean
    for name in ("memory_s", "memory_t"):
        assert torch.equal(r0[name], r1[name]), name  # one memory on both ranks
        changed = (r0[name] != r0[f"initial_{name}"]).any(dim=1).nonzero().flatten().tolist()
        assert changed == [*range(0, B), *range(20, 20 + B - 2)], name  # every rank's rows, and only those
