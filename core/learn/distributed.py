"""Training on several processes or machines under ``torchrun`` (DistributedDataParallel).

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without any of them this module
is not used and training is one process, as before. Ranks agree without talking wherever they can: every
rank reads the whole ``labels.csv``, so splits, the held-out validation set, class lists, the target's
normalisation and the order of the global batches are computed identically on each. Only the networks are
sharded (``dataset.shard_rows``): each rank converts and holds its own, and the few things that depend on
them — conversion failures, input scaling sums, the epoch's loss and metrics — are exchanged explicitly.

Exit codes of the errors raised here: 2 (torchrun environment partly set or inconsistent), 3 (the
``torch.distributed`` backend is not available in this torch build), 1 (the process group could not be
formed, e.g. MASTER_ADDR unreachable).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from ..errors import NNGraphError, PluginError, UsageError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Collectives wait this long for the slowest rank (a rank converting a large shard before the first one).
TIMEOUT = timedelta(hours=1)


@dataclass
class Group:
    """This process's place in a distributed run and the collectives training needs."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    device: Any            # torch.device of this rank
    backend: str

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoint, plot and logs."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def all_sum(self, values):
        """Element-wise sum of a float tensor over all ranks (float64 on the wire), returned on CPU."""
        import torch.distributed as dist
        t = values.detach().double().to(self.device)
        dist.all_reduce(t)
        return t.cpu()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        import torch.distributed as dist
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model, seed: int, sample):
        """``model`` (built from the same seed on every rank) in DistributedDataParallel, and torch's
        generator re-seeded per rank for what draws from it during training (dropout). One forward and
        backward of ``sample`` (a featurized graph) finds out whether the model leaves parameters without
        gradient, which DDP must then look for on every step (an extra pass over the autograd graph). The
        buffers (input scales; BatchNorm statistics, which ``train.refresh_batch_norms`` computes from sums
        over all ranks) are equal on every rank by construction, so they are not re-broadcast on each
        forward (which would make every forward, evaluation included, a collective)."""
        import torch
        from torch.nn.parallel import DistributedDataParallel
        from torch_geometric.data import Batch
        buffers = {k: b.clone() for k, b in model.named_buffers()}       # a plugin's BatchNorm statistics
        model(Batch.from_data_list([sample.clone()]).to(self.device)).float().sum().backward()
        unused = sum(1 for p in model.parameters() if p.requires_grad and p.grad is None)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        unused = bool(self.all_sum(torch.tensor([float(unused)]))[0] > 0)
        ids = [self.device.index] if self.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=unused)
        torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))
        return net

    def merge_epoch(self, total: float, count: int, seen_y: list, seen_out: list):
        """The epoch's training loss sum, count and (labels, outputs) of every rank, on every rank."""
        import torch
        sums = self.all_sum(torch.tensor([total, count], dtype=torch.float64))
        parts = self.gather((np.concatenate(seen_y) if seen_y else None,
                             torch.cat(seen_out).cpu() if seen_out else None))
        ys = [y for y, _ in parts if y is not None]
        outs = [o for _, o in parts if o is not None]
        return float(sums[0]), int(sums[1]), ys, outs

    def batch_outputs(self, out, y, share: float):
        """The global batch's outputs and labels, every rank's part in rank order, for a loss over pairs
        across ranks (``train.rank_loss``): this rank's part stays ``out`` (gradients flow to it), the others
        are constants. A stand-in (``share`` 0) contributes nothing. Every rank, summing its own gradient
        of the same loss, then gives DDP's average the one-process gradient."""
        import torch
        mine = (out.detach().cpu(), y.detach().cpu()) if share else (out.detach().cpu()[:0], y.detach().cpu()[:0])
        parts = self.gather(mine)
        outs = [out if r == self.rank and share else o.to(out) for r, (o, _) in enumerate(parts)]
        ys = [t.to(y.device) for _, t in parts]
        return torch.cat(outs), torch.cat(ys)

    def gather_rows(self, held: np.ndarray, local_out, n: int):
        """Outputs for rows ``held`` (positions in a list of ``n``) from every rank → all ``n`` rows in order."""
        import torch
        parts = self.gather((held, local_out.cpu()))
        width = next((o.shape[1:] for _, o in parts if len(o)), ())
        full = torch.zeros((n, *width))
        for rows, out in parts:
            if len(rows):
                full[torch.as_tensor(rows)] = out.to(full.dtype)
        return full

    def finish(self) -> None:
        """Wait until every rank is done (rank 0 has written its files) before any leaves: a rank exiting
        while another still talks to it makes gloo abort the slower one. Only on success: when a rank fails,
        torchrun stops the others."""
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Leave the process group while the interpreter is fully alive. The DistributedDataParallel wrapper
        holds the gloo process group and sits in reference cycles; collected only at interpreter shutdown,
        its worker threads are destroyed unjoined and the process aborts (SIGABRT, "terminate called without
        an active exception"), so it is collected here first."""
        import gc

        import torch.distributed as dist
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()


def held_part(chosen: np.ndarray, seeds, held: np.ndarray):
    """The part of a global batch (indices ``chosen``) this rank holds, its views' seeds and its share of
    the batch; when it holds none, a stand-in (its first graph, share 0): every rank takes every step."""
    mine = held[chosen]
    if not mine.any():
        return np.flatnonzero(held)[:1], None if seeds is None else seeds[:, :1], 0.0
    return chosen[mine], None if seeds is None else seeds[:, mine], float(mine.mean())


def requested(environ=None) -> bool:
    """True when any torchrun variable is set (then all of them must be)."""
    environ = os.environ if environ is None else environ
    return any(k in environ for k in ENV)


def _int_env(environ, key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise UsageError(f"{key}={environ[key]!r} is not an integer (set by torchrun)") from None


def init_from_env(device: str = "auto", environ=None) -> Group | None:
    """Join the process group torchrun describes, or return None when no torchrun variable is set.

    ``device``: ``cpu`` → gloo; ``cuda`` → nccl on ``cuda:LOCAL_RANK``; ``auto`` → cuda when available."""
    environ = os.environ if environ is None else environ
    if not requested(environ):
        return None
    missing = [k for k in ENV if k not in environ]
    if missing:
        present = [k for k in ENV if k in environ]
        raise UsageError(f"torchrun environment incomplete: {', '.join(present)} set but {', '.join(missing)} "
                         f"not (launch with torchrun, or unset them for one process)")
    rank, world, local_rank = (_int_env(environ, k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    local_world = _int_env(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else 1
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise UsageError(f"torchrun environment inconsistent: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}")
    import torch
    import torch.distributed as dist
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) on this "
                             f"machine: use --nproc-per-node {torch.cuda.device_count()} or fewer")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device(device), "gloo"
    available = dist.is_available() and {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}[backend]()
    if not available:
        raise PluginError(f"torch.distributed backend {backend!r} is not available in this torch build "
                          f"({torch.__version__}); needed for {dev.type} training under torchrun")
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT,
                                **({"device_id": dev} if backend == "nccl" else {}))
    except Exception as e:  # noqa: BLE001 - store/rendezvous errors have many types; one line says which
        raise NNGraphError(f"could not join the process group at {environ['MASTER_ADDR']}:{environ['MASTER_PORT']} "
                           f"as rank {rank} of {world} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                           ) from None
    return Group(rank, world, local_rank, local_world, dev, backend)


def sync_dataset(data, group: Group) -> None:
    """Make every rank's view of ``data`` (loaded with ``shard=group.shard``) the same: models that failed to
    convert on any rank are dropped everywhere and listed in ``data.failed``; ranks left without training
    networks are an error on every rank (a rank with nothing to train would leave the others waiting)."""
    from ..errors import InputError
    failed = [f for part in group.gather(list(data.failed)) for f in part]
    gone = {name for name, _ in failed}
    data.entries = [e for e in data.entries if e.row["model"] not in gone]
    data.failed = failed
    counts = group.gather(sum(1 for e in data.split("train") if e.graph is not None))
    if min(counts) == 0:
        empty = [r for r, c in enumerate(counts) if c == 0]
        raise InputError(f"rank(s) {empty} of {group.world} hold no training network ({sum(counts)} in all): "
                         f"use fewer processes")
