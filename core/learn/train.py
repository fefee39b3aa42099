"""Train, evaluate and apply an encoder + head on a dataset of networks.

The model and its checkpoint file live in :mod:`nngraph.learn.checkpoint`; this module is the
training loop, the metrics and the batch pipeline shared by training and inference.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import InputError
from .featurize import FeatureConfig, featurize
from .probes import attach_all
from ..graph.ir import NeuralGraph
from ..loader import registry
from .checkpoint import GraphModel, build_encoder, load_checkpoint, readout_module, resolve_device


@dataclass
class TrainConfig:
    target: str
    task: str = "regression"              # regression | classification | embedding
    encoder: str = "ng-gnn"
    head: str | None = None               # default: the task's head
    epochs: int = 40
    lr: float = 5e-3                      # benchmarks/learning: 2e-3 left tasks at train 0.74, 1e-2 collapsed ng-gnn
    weight_decay: float = 1e-4
    batch_size: int = 32
    hidden: int = 32                      # small zoos overfit wider encoders (benchmarks/zoo_benchmark.py)
    layers: int = 2
    heads: int = 4                        # attention heads (ng-transformer)
    sum_scaler: str = "log"               # ng-gnn's PNA sum: log (mean · log(1 + degree)) | linear (plain sum);
                                          # log with fan-in scaling: benchmarks/learning, README "(b)"
    pool_norm: str = "auto"               # batch: BatchNorm of the pooled graph vector (fits populations of
                                          # near-identical networks); auto: the encoder's default (pool_norm_for)
    pool_fixed: bool = False              # the readout also gets the mean state of the fixed (input/output) neurons
                                          # (message-passing encoders; INRs with probes: README "Pool fixed")
    rank_weight: float = 1.0              # regression: weight of a pairwise ranking loss next to MSE (task_loss);
                                          # 1 vs 0, ng-gnn, 6 seeds: τ +0.02 mean over 5 zoos (README "rank loss")
    dropout: float = 0.0                  # in the head
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.0             # held out of the training split when there is no 'val' split
    patience: int = 0                     # early stopping: epochs without a better validation loss (0: off)
    input_scaling: bool = True            # divide inputs by the training set's feature RMS (featurize.feature_scales)
    readout_norm: bool = True             # standardize the pooled vector by its training-set statistics (readout_stats)
    features: FeatureConfig = field(default_factory=lambda: FeatureConfig(scale="fan_in"))  # README "(b)": width
    probes_optional: bool = False         # probe features are an encoder default, not a request: a population
                                          # that cannot be probed trains without them (attach_training_probes)

    @classmethod
    def for_encoder(cls, target: str, encoder: str = "ng-gnn", **options) -> "TrainConfig":
        """The configuration ``ngraph train`` trains with: ``options`` (``TrainConfig`` or ``FeatureConfig``
        fields; ``None`` means unset) over the encoder's measured training defaults
        (``EncoderSpec.train_defaults``, keys :data:`TRAIN_DEFAULT_KEYS`) over the plain defaults of
        ``TrainConfig(target)``. A ``pool_norm`` default stays ``"auto"`` (:func:`pool_norm_for` reads it,
        and keeps it off where it cannot work); ``probes`` from the defaults are optional
        (:attr:`probes_optional`) unless ``options`` ask for probes (``probes``, ``probe_inputs``, or
        ``probe_summary=True``); a ``probe_summary`` default is dropped with the probes it summarizes."""
        spec = registry().encoders.get(encoder)
        registered = dict(spec.train_defaults) if spec else {}
        unknown = sorted(set(registered) - set(TRAIN_DEFAULT_KEYS))
        if unknown:
            raise ValueError(f"encoder {encoder!r}'s train_defaults: {', '.join(unknown)} cannot be an encoder "
                             f"default (allowed: {', '.join(TRAIN_DEFAULT_KEYS)})")
        defaults = {k: v for k, v in registered.items() if k != "pool_norm"}
        given = {k: v for k, v in options.items() if v is not None}
        train_fields = set(cls.__dataclass_fields__) - {"target", "encoder", "features", "probes_optional"}
        feature_fields = set(FeatureConfig.__dataclass_fields__)
        unknown = sorted(set(given) - train_fields - feature_fields)
        if unknown:
            raise ValueError(f"options: {', '.join(unknown)} is no TrainConfig or FeatureConfig field")
        merged = {**defaults, **given}
        plain = cls(target=target)
        if "probe_summary" not in given and not merged.get("probes", plain.features.probes):
            merged.pop("probe_summary", None)          # a default summary follows the probes it summarizes
        features = replace(plain.features, **{k: v for k, v in merged.items() if k in feature_fields})
        asked = "probes" in given or "probe_inputs" in given or bool(given.get("probe_summary"))
        optional = bool(features.probes) and "probes" in defaults and not asked
        return cls(target=target, encoder=encoder, features=features, probes_optional=optional,
                   **{k: v for k, v in merged.items() if k in train_fields})

    def encoder_config(self, world: int = 1) -> dict:
        """Every encoder option; an encoder accepts and ignores those it does not use (``EncoderSpec``).
        ``world``: the number of training processes (``pool_norm="auto"`` depends on it)."""
        return {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "sum_scaler": self.sum_scaler,
                "pool_norm": pool_norm_for(self, world),
                **({"pool_fixed": True} if self.pool_fixed else {})}


#: The options an encoder may default (``EncoderSpec.train_defaults``): those ``ngraph train`` leaves
#: unset unless given. The others (lr, hidden, …) are the same for every encoder.
TRAIN_DEFAULT_KEYS = ("pool_norm", "pool_fixed", "batch_size", "probes", "probe_inputs", "probe_summary")


def pool_norm_for(cfg: "TrainConfig", world: int = 1) -> str:
    """The pool norm an encoder is built with: ``cfg.pool_norm`` unless it is ``"auto"``, which is the
    ``pool_norm`` of the encoder's ``EncoderSpec.train_defaults`` where a batch can be standardized
    (batches of at least two graphs, one process) and ``"none"`` otherwise (also for an encoder that is
    not registered or has no such default)."""
    if cfg.pool_norm != "auto":
        return cfg.pool_norm
    if cfg.batch_size < 2 or world != 1:
        return "none"
    spec = registry().encoders.get(cfg.encoder)
    return spec.train_defaults.get("pool_norm", "none") if spec is not None else "none"


def encode_labels(entries, cfg: TrainConfig, classes=None):
    raw = [e.row.get(cfg.target) for e in entries]
    if any(v is None or v == "" for v in raw):
        missing = [e.row["model"] for e, v in zip(entries, raw) if v in (None, "")][:5]
        raise InputError(f"target {cfg.target!r} is missing for {missing}")
    if cfg.task == "classification":
        classes = classes or sorted(set(raw))
        return np.array([classes.index(v) if v in classes else -1 for v in raw]), classes
    def number(v):
        try:
            return float(v)
        except ValueError:
            return None
    values = [number(v) for v in raw]
    if None in values:
        bad = [f"{e.row['model']} ({v!r})" for e, v, x in zip(entries, raw, values) if x is None][:5]
        raise InputError(f"target {cfg.target!r} is not numeric for {', '.join(bad)}; use --task classification")
    values = np.array(values, np.float32)
    if not np.isfinite(values).all():
        bad = [e.row["model"] for e, v in zip(entries, values) if not np.isfinite(v)][:5]
        raise InputError(f"target {cfg.target!r} is not finite (nan/inf, or beyond float32) for {bad}")
    return values, None


def refresh_batch_norms(model, batches, device, reduce=None) -> bool:
    """Set the running statistics of every BatchNorm that declares ``refresh_statistics = True`` (ng-gnn's
    and ng-transformer's ``pool_norm="batch"``) to the exact mean and (unbiased) variance of its inputs over
    ``batches`` under the current weights: float64 sums collected by a forward pre-hook, summed over ranks
    by ``reduce``. False when the model has none; other BatchNorms (a plugin's own) keep their running
    averages, as they were trained. Why: running averages of a pooled vector that drifts during training
    lag behind it, and where networks differ by a tiny part of that vector, evaluating with lagging
    statistics put a training set that was fitted (loss 0.09) back at chance accuracy; an average of
    per-batch statistics would miss the spread between batches and weigh a last small batch like a full
    one. Exact when no other refreshed BatchNorm lies upstream (one pooled vector per encoder)."""
    import torch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and getattr(m, "refresh_statistics", False) and m.running_mean is not None]
    if not norms:
        return False
    sums = {m: None for m in norms}

    def collect(module, args):
        x = args[0].detach().double()
        x = x.transpose(0, 1).reshape(x.shape[1], -1)          # channels first, every other axis pooled
        part = torch.stack([x.sum(1), (x * x).sum(1), x.new_full((x.shape[0],), x.shape[1])])
        sums[module] = part if sums[module] is None else sums[module] + part

    hooks = [m.register_forward_pre_hook(collect) for m in norms]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                if getattr(batch, "share", 1):                 # not a distributed stand-in graph
                    model(batch.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m in norms:
        total = sums[m] if sums[m] is not None else torch.zeros(3, m.num_features, dtype=torch.float64)
        if reduce is not None:
            total = reduce(total)
        n = total[2].clamp(min=1)
        mean = total[0] / n
        var = (total[1] - n * mean * mean).clamp(min=0) / (n - 1).clamp(min=1)
        if float(total[2].max()) > 0:
            m.running_mean.copy_(mean.to(m.running_mean))
            m.running_var.copy_(var.to(m.running_var))
    return True


def graph_batches(graphs: list[NeuralGraph], y, features: FeatureConfig, batch_size: int, shuffle: bool, rng,
             views: bool = False, cache: dict | None = None, held: np.ndarray | None = None):
    """Featurized batches (each graph featurized once when a ``cache`` dict is given); with
    ``views``, each batch is two random symmetries of the same networks (first half, second
    half) for contrastive training. With ``held`` (distributed training: a mask of the graphs this
    rank holds), batches are drawn over all graphs as in one process and keep their held part;
    ``batch.share`` is its fraction of the global batch (0 with a stand-in graph when the rank holds
    none of it: every rank takes every step)."""
    import torch
    from torch_geometric.data import Batch
    order = rng.permutation(len(graphs)) if shuffle else np.arange(len(graphs))
    for i in range(0, len(order), batch_size):
        chosen = order[i:i + batch_size]
        seeds = rng.integers(0, 2**31, size=(2, len(chosen))) if views else None
        if held is not None:
            from .distributed import held_part
            chosen, seeds, share = held_part(chosen, seeds, held)
        if views:
            items = [featurize(graphs[j].permute(graphs[j].random_symmetry(int(s))), features)
                     for v in range(2) for j, s in zip(chosen, seeds[v])]
        else:
            items = []
            for j in chosen:
                d = cache.get(int(j)) if cache is not None else None
                if d is None:
                    d = featurize(graphs[j], features)
                    if cache is not None:
                        cache[int(j)] = d
                items.append(d.clone())
        for d, j in zip(items, list(chosen) * (2 if views else 1)):
            d.y = torch.tensor([y[j]])
        batch = Batch.from_data_list(items)
        if held is not None:
            batch.share = share
        yield batch


def _info_nce(z, temperature: float = 0.1):
    """Two views per network (first and second half of the batch) are positives of each other."""
    import torch
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, target)


def metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    if task == "classification":
        return {"accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")}
    from scipy.stats import kendalltau
    mse = float(np.mean((y_true - y_pred) ** 2)) if len(y_true) else float("nan")
    var = float(np.var(y_true)) if len(y_true) else float("nan")
    tau = kendalltau(y_true, y_pred).statistic if len(y_true) > 1 else float("nan")
    return {"kendall_tau": float(tau), "r2": 1 - mse / var if var > 0 else float("nan"), "mse": mse}


def task_loss(task: str, out, y, rank_weight: float = 0.0):
    """The task's loss on one batch. Regression: mean squared error, plus ``rank_weight`` times
    :func:`rank_loss`, since generalization prediction is judged by Kendall τ, which only counts
    ordered pairs (``TrainConfig.rank_weight``)."""
    import torch
    if task == "embedding":
        return _info_nce(out)
    if task == "regression":
        loss = torch.nn.functional.mse_loss(out.squeeze(-1), y.float())
        return loss + rank_weight * rank_loss(out, y) if rank_weight else loss
    return torch.nn.functional.cross_entropy(out, y.long())


def rank_loss(out, y, block: int = 1024):
    """Pairwise ranking loss (RankNet): the mean over pairs with different labels of
    softplus(−sign(y_i − y_j)·(s_i − s_j)), which is small for pairs ordered as their labels and grows
    with a wrong order; 0 when every label is tied. Order-free, so a distributed step computes it over the
    global batch gathered in any order (``Group.batch_outputs``). Computed ``block`` rows at a time, so a
    validation set of n networks costs O(block · n) memory, not n²."""
    import torch
    pred, target = out.squeeze(-1), y.to(out.dtype)
    total, count = pred.new_zeros(()), pred.new_zeros(())
    for i in range(0, len(pred), block):
        sign = torch.sign(target[i:i + block, None] - target[None, :])
        pairs = (sign != 0).to(out.dtype)
        total = total + (torch.nn.functional.softplus(-sign * (pred[i:i + block, None] - pred[None, :])) * pairs).sum()
        count = count + pairs.sum()
    return total / count.clamp(min=1)                    # no host sync: empty pair sets give 0


def _hold_out(tr: list, fraction: float, rng) -> tuple[list, list]:
    """Split ``fraction`` of the training entries off as a validation set (deterministic in the seed)."""
    if not 0 < fraction < 1:
        raise InputError(f"--val-fraction must be in (0, 1), got {fraction}")
    n_va = max(1, int(round(len(tr) * fraction)))
    if n_va >= len(tr):
        raise InputError(f"--val-fraction {fraction} leaves no training models out of {len(tr)}")
    perm = rng.permutation(len(tr))
    return [tr[i] for i in sorted(perm[n_va:])], [tr[i] for i in sorted(perm[:n_va])]


def check_options(cfg: TrainConfig, world: int = 1) -> None:
    """Refuse option values that cannot train: a non-finite or negative rank weight, an unknown pool
    norm, pool norm over batches of one graph, and pool norm across ``world`` > 1 processes (each rank
    would standardize by its own part of the batch)."""
    if not (math.isfinite(cfg.rank_weight) and cfg.rank_weight >= 0):
        raise InputError(f"--rank-weight must be a finite number >= 0, got {cfg.rank_weight}")
    if cfg.pool_norm not in ("auto", "none", "batch"):
        raise InputError(f"--pool-norm must be auto, none or batch, got {cfg.pool_norm!r}")
    if cfg.pool_norm == "batch" and cfg.batch_size < 2:
        raise InputError("--pool-norm batch needs --batch-size >= 2 (it standardizes across a batch's graphs)")
    if cfg.pool_norm == "batch" and world > 1:
        raise InputError("--pool-norm batch is not supported under torchrun (each rank would standardize "
                         "by its own part of the batch); train in one process or without it")


def check_config(cfg: TrainConfig, world: int = 1) -> None:
    """Everything :func:`train` would refuse about ``cfg``, before any data is loaded (the CLI calls it
    first): :func:`check_options`, an unknown encoder, and options the encoder does not implement
    (:func:`check_encoder` on a throwaway one; ``train`` checks the model it builds instead)."""
    check_options(cfg, world)
    import torch
    options = cfg.encoder_config(world)
    # a throwaway encoder: the seeded init must not see it (CPU generator only: built-in encoders are
    # built on CPU, and forking CUDA state would initialise CUDA here)
    with torch.random.fork_rng(devices=[]):
        try:
            encoder = build_encoder(cfg.encoder, options, cfg.features)
        except ValueError as e:                # option values the encoder refuses (EncoderSpec)
            raise InputError(_as_flags(str(e), options)) from None
    check_encoder(cfg, encoder)


def _as_flags(message: str, options: dict) -> str:
    """An encoder's refusal in ``ngraph train``'s words: its option names (``heads``, ``sum_scaler``)
    as the flags that set them (``--heads``, ``--sum-scaler``)."""
    names = "|".join(sorted(map(re.escape, options), key=len, reverse=True))
    return re.sub(rf"\b({names})\b", lambda m: "--" + m.group(1).replace("_", "-"), message)


def check_encoder(cfg: TrainConfig, encoder) -> None:
    """Refuse options the built ``encoder`` does not implement: an encoder accepts and ignores options it
    does not use (``EncoderSpec``), so an explicit request for one would otherwise be dropped silently."""
    import torch
    if cfg.pool_norm == "batch" and not isinstance(getattr(encoder, "pool_norm", None),
                                                  torch.nn.modules.batchnorm._BatchNorm):
        raise InputError(f"--pool-norm {cfg.pool_norm}: encoder {cfg.encoder!r} has no pooled vector to normalize "
                         f"(ng-gnn, ng-transformer and deepsets have)")
    if cfg.features.probe_summary and not getattr(encoder, "summary_dim", 0):
        raise InputError(f"--probe-summary: encoder {cfg.encoder!r} does not read the output summary "
                         f"(ng-gnn and ng-transformer do)")
    if cfg.pool_fixed and not getattr(encoder, "pool_fixed", False):
        raise InputError(f"--pool-fixed: encoder {cfg.encoder!r} has no pooled vector to extend "
                         f"(ng-gnn and ng-transformer have)")


def attach_probes_quietly(graphs, paths, cfg: TrainConfig, progress: bool = False, status=None) -> None:
    """:func:`probes.attach_all` with torch's CPU generator forked: probing runs before the model is built,
    and an adapter that draws from torch's global stream must not change the seeded initial weights.
    ``progress``: a progress bar on the terminal (each model runs once per probe: a large zoo takes minutes);
    ``status(line)``: progress lines instead (:class:`~.progress.Ticker`)."""
    import torch

    from .progress import tracked
    label = f"probing {len(graphs)} networks ({cfg.features.probes} inputs each)"
    with torch.random.fork_rng(devices=[]), tracked(label, len(graphs), progress, status) as advance:
        attach_all(graphs, paths, cfg.features.probes, inputs=cfg.features.probe_inputs, advance=advance)


def _any_rank(group, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank of ``group`` (this process's ``flag`` without one). Every rank
    must call it: a rank that failed and returned alone would leave the others waiting in a collective."""
    if group is None:
        return flag
    import torch
    return bool(group.all_sum(torch.tensor([1.0 if flag else 0.0]))[0] > 0)


def attach_training_probes(cfg: TrainConfig, entries, group=None, note=None, progress: bool = False,
                           status=None) -> TrainConfig:
    """Attach ``cfg``'s probe features to the ``entries``' graphs (every split: a test network that cannot
    be probed would fail evaluation later); returns the configuration to train with.

    Probes asked for must work: a network that cannot be probed is an error naming it, raised on every rank
    of ``group`` (the others say another rank failed). Probes that are an encoder default
    (``cfg.probes_optional``) are dropped for the whole population, on every rank, when any network cannot
    be probed (graphs without runnable model files, a model the runtime refuses) or is one that training
    streams (``STREAM_EDGES`` edges or more: running it k times could take longer than the training
    itself): the configuration comes back without them and ``note(reason)`` says why. Sound degradation:
    a default feature never refuses a population the plain configuration trains on."""
    if not cfg.features.probes:
        return cfg
    graphs, paths = [e.graph for e in entries], [e.path for e in entries]
    if not cfg.probes_optional:
        error = None
        try:
            attach_probes_quietly(graphs, paths, cfg, progress, status)
        except Exception as e:  # noqa: BLE001 - re-raised below, after every rank has heard of it
            error = e
        if _any_rank(group, error is not None) and error is None:
            error = InputError("probe features: a network on another rank cannot be probed")
        if error is not None:
            raise error
        return cfg
    failure = next((f"{p} has {g.num_edges} edges (default probes run on networks of fewer than "
                    f"{STREAM_EDGES}: --probes N probes anyway)" for g, p in zip(graphs, paths)
                    if g is not None and g.num_edges >= STREAM_EDGES), None)
    if failure is None:
        try:
            attach_probes_quietly(graphs, paths, cfg, progress, status)
        except Exception as e:  # noqa: BLE001 - an optional feature: any failure drops it, with the reason
            failure = str(e).splitlines()[0] if str(e) else type(e).__name__
    if _any_rank(group, failure is not None) and failure is None:
        failure = "a network on another rank cannot be probed"
    if failure is None:
        return cfg
    if note:
        note(f"training without probe features (an {cfg.encoder} default): {failure}")
    return replace(cfg, features=replace(cfg.features, probes=0, probe_summary=False), probes_optional=False)


def train(dataset, cfg: TrainConfig, progress: bool = True, log=None, group=None, note=None, status=None):
    """Returns (model, meta, history). ``history`` has one record per epoch: ``train_loss``, the
    task's metric on the epoch's training batches (``train_accuracy`` / ``train_kendall_tau`` …, as
    trained, i.e. with dropout) and, with a validation set, ``val_loss`` and ``val_*`` metrics. With
    ``patience`` and a validation set, training stops after ``patience`` epochs without a lower
    validation loss and the best epoch's weights are returned. ``log(record)`` is called per epoch,
    ``status(line)``: progress lines while the networks are probed, for runs not on a terminal.
    ``note(message)`` for what changed the configuration (optional probes dropped:
    :func:`attach_training_probes`).
    ``group`` (``distributed.init_from_env``): this process is one rank of a distributed run; the
    dataset holds only its shard's graphs (the others are None), the global batches are those of one
    process split by shard, and every rank computes the same history and weights."""
    import torch
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = group.device if group else resolve_device(cfg.device)
    check_options(cfg, group.world if group else 1)
    rank_weight = cfg.rank_weight if cfg.task == "regression" else 0.0
    tr, va = dataset.split("train"), dataset.split("val")
    if not tr:
        raise InputError(f"{dataset.root}: no training models (split column 'train')")
    if not va and cfg.val_fraction > 0 and cfg.task != "embedding":
        tr, va = _hold_out(tr, cfg.val_fraction, rng)
    if cfg.task == "embedding":       # no labels: each network's random symmetries are its positives
        y_tr, classes, y_va, va = np.zeros(len(tr), np.float32), None, np.zeros(0), []
    else:
        y_tr, classes = encode_labels(tr, cfg)
        y_va, _ = encode_labels(va, cfg, classes) if va else (np.zeros(0), None)
    head = cfg.head or {"classification": "classification", "embedding": "embedding"}.get(cfg.task, "regression")
    head_config = {"dropout": cfg.dropout} if cfg.dropout > 0 else {}
    out_dim = len(classes) if classes else (32 if cfg.task == "embedding" else 1)
    mean, std = (float(y_tr.mean()), float(y_tr.std() or 1.0)) if cfg.task == "regression" else (0.0, 1.0)
    encoder_config = cfg.encoder_config(group.world if group else 1)
    cfg = attach_training_probes(cfg, dataset.entries, group, note, progress, status)
    model = GraphModel.build(cfg.encoder, encoder_config, head, out_dim, cfg.features,
                             cfg.input_scaling, head_config, cfg.readout_norm).to(device)
    check_encoder(cfg, model.encoder)
    graphs_tr = [e.graph for e in tr]
    graphs_va = [e.graph for e in va if e.graph is not None]          # this rank's part when distributed
    cache_tr: dict = {i: featurize(g, cfg.features) for i, g in enumerate(graphs_tr) if g is not None}
    cache_va: dict = {}
    if cfg.input_scaling:
        from .featurize import feature_scales
        node_scale, edge_scale = feature_scales(list(cache_tr.values()), cfg.features,
                                                reduce=group.all_sum if group else None)
        model.encoder.input_node_scale.copy_(node_scale)
        model.encoder.input_edge_scale.copy_(edge_scale)
    readout_norm = cfg.readout_norm and hasattr(model.encoder, "readout_shift")
    if readout_norm:
        shift, scale = readout_stats(model.encoder, list(cache_tr.values()), device,
                                     reduce=group.all_sum if group else None)
        model.encoder.readout_shift.copy_(shift)
        model.encoder.readout_scale.copy_(scale)
    net, held_tr = model, None
    if group:                                             # DDP from here on; the graphs this rank holds
        net = group.wrap(model, cfg.seed, next(iter(cache_tr.values())))
        held_tr = np.array([g is not None for g in graphs_tr])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    target = (y_tr - mean) / std if cfg.task == "regression" else y_tr
    history, best, best_state = [], (math.inf, 0), None
    from rich.progress import Progress
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"training {cfg.encoder}", total=cfg.epochs)
        for epoch in range(cfg.epochs):
            model.train()
            total, count, seen_y, seen_out = 0.0, 0, [], []
            for batch in graph_batches(graphs_tr, target, cfg.features, cfg.batch_size, True, rng,
                                  views=cfg.task == "embedding", cache=cache_tr, held=held_tr):
                batch = batch.to(device)
                out = net(batch)
                loss = task_loss(cfg.task, out, batch.y, 0.0 if group else rank_weight)
                opt.zero_grad()
                # DDP averages gradients over ranks: weighting each by its share of the batch gives the batch mean
                if group:
                    step = loss * (batch.share * group.world)
                    if rank_weight:          # over the global batch: the other ranks' outputs as constants
                        ranked = rank_weight * rank_loss(*group.batch_outputs(out, batch.y, batch.share))
                        step, loss = step + ranked * group.world, loss + ranked.detach()
                    step.backward()
                else:
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                if group and not batch.share:
                    continue                                  # a stand-in: weight 0, not counted
                total += float(loss.detach()) * batch.num_graphs
                count += batch.num_graphs
                if cfg.task != "embedding":
                    seen_y.append(batch.y.cpu().numpy())
                    seen_out.append(out.detach().cpu())
            sched.step()
            refresh_batch_norms(model, graph_batches(graphs_tr, target, cfg.features, cfg.batch_size, False, rng,
                                                     cache=cache_tr, held=held_tr), device,
                                reduce=group.all_sum if group else None)
            if group:
                total, count, seen_y, seen_out = group.merge_epoch(total, count, seen_y, seen_out)
            record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
            if seen_out:
                y_seen = np.concatenate(seen_y)
                pred = decode_predictions(cfg.task, torch.cat(seen_out), mean, std)
                y_seen = y_seen * std + mean if cfg.task == "regression" else y_seen
                record.update({f"train_{k}": v for k, v in metrics(cfg.task, y_seen, pred).items()})
            if va:
                out_va = model_outputs(model, graphs_va, cfg.features, device, cache=cache_va)
                if group:
                    out_va = group.gather_rows(np.flatnonzero([e.graph is not None for e in va]), out_va, len(va))
                y_norm = (y_va - mean) / std if cfg.task == "regression" else y_va
                record["val_loss"] = float(task_loss(cfg.task, out_va, torch.as_tensor(y_norm), rank_weight))
                record.update({f"val_{k}": v for k, v in metrics(
                    cfg.task, y_va, decode_predictions(cfg.task, out_va, mean, std)).items()})
                if record["val_loss"] < best[0]:
                    best = (record["val_loss"], epoch + 1)
                    if cfg.patience:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(record)
            bar.advance(task)
            if log:
                log(record)
            if va and cfg.patience and epoch + 1 - best[1] >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    meta = {"encoder": cfg.encoder, "encoder_config": encoder_config, "head": head, "head_config": head_config,
            "out_dim": out_dim, "task": cfg.task, "target": cfg.target, "classes": classes, "y_mean": mean,
            "y_std": std, "features": cfg.features.to_json(), "input_scaling": cfg.input_scaling,
            "readout_norm": readout_norm,
            "n_train": len(tr), "n_val": len(va), "history": history, "best_epoch": best[1] if best_state is not None else len(history),
            "config": {k: v for k, v in asdict(cfg).items() if k != "features"}}
    if group:
        meta["processes"] = group.world
    return model, meta, history


def readout_stats(encoder, datas, device, reduce=None, batch_size: int = 32):
    """``(shift, scale)`` for ``checkpoint.attach_readout_norm``: the mean and inverse standard deviation
    of each dimension of the pooled vector the encoder's readout receives, over the featurized graphs
    ``datas`` (with the encoder's current weights and input scales). A dimension that does not vary
    (std below 1e-4 of its magnitude: unused depth buckets, float noise) keeps scale 1. ``reduce`` sums
    partial sums over processes (distributed training), as in ``featurize.feature_scales``."""
    import torch
    from torch_geometric.data import Batch
    mod = readout_module(encoder)
    d = encoder.readout_shift.numel()
    sums = torch.zeros(2 * d + 1, dtype=torch.float64)
    seen: list = []
    hook = mod.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))   # after the norm hook
    shift, scale = encoder.readout_shift.clone(), encoder.readout_scale.clone()
    encoder.readout_shift.zero_()
    encoder.readout_scale.fill_(1.0)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(datas), batch_size):
                encoder(Batch.from_data_list([x.clone() for x in datas[i:i + batch_size]]).to(device))
                p = seen.pop().double().cpu()
                sums += torch.cat([p.sum(0), (p * p).sum(0), torch.tensor([float(len(p))], dtype=torch.float64)])
    finally:
        hook.remove()
        encoder.train(was_training)
        encoder.readout_shift.copy_(shift)
        encoder.readout_scale.copy_(scale)
    if reduce is not None:
        sums = reduce(sums)
    n = float(sums[-1])
    if n < 2:
        return torch.zeros(d), torch.ones(d)
    mean = sums[:d] / n
    std = torch.sqrt(torch.clamp(sums[d:2 * d] / n - mean * mean, min=0))
    varies = (std > 1e-4 * mean.abs()) & (std > 1e-6 * float(torch.sqrt((mean * mean).mean())))
    return mean.float(), torch.where(varies & (std > 0), 1 / std.clamp(min=1e-30), torch.ones_like(std)).float()


def decode_predictions(task: str, out, mean: float, std: float) -> np.ndarray:
    """Model outputs → predictions (class ids, or targets in their own units)."""
    return out.argmax(-1).numpy() if task == "classification" else out.squeeze(-1).numpy() * std + mean


def model_outputs(model, graphs, features, device, batch_size: int = 32, cache: dict | None = None):
    """Raw model outputs for ``graphs`` (on CPU), in order."""
    import torch
    model.eval()
    outs = []
    with torch.no_grad():
        for batch in graph_batches(graphs, np.zeros(len(graphs)), features, batch_size, False, None, cache=cache):
            outs.append(model(batch.to(device)).cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def _predict(model, graphs, features, device, task, mean, std, batch_size: int = 32, cache: dict | None = None):
    out = model_outputs(model, graphs, features, device, batch_size, cache)
    return decode_predictions(task, out, mean, std) if len(out) else np.zeros(0)


def evaluate(ckpt, dataset, split: str | None = "test", device: str = "auto") -> dict[str, Any]:
    model, meta, dev = load_checkpoint(ckpt, device)
    entries = dataset.split(split)
    if not entries:
        raise InputError(f"{dataset.root}: no models in split {split!r}")
    cfg = TrainConfig(target=meta["target"], task=meta["task"])
    y, _ = encode_labels(entries, cfg, meta["classes"])
    features = FeatureConfig(**meta["features"])
    attach_all([e.graph for e in entries], [e.path for e in entries], features.probes, inputs=features.probe_inputs)
    pred = _predict(model, [e.graph for e in entries], features, dev, meta["task"], meta["y_mean"], meta["y_std"])
    out = metrics(meta["task"], y, pred)
    out["n"] = len(entries)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


#: From this many edges, ``predict``/``embed`` encode a graph with its encoder's streamed forward
#: (``learn.stream``) when it has one. Measured (``benchmarks/scale.py --sizes nano,micro --in-memory``,
#: README "Scale"; ng-gnn hidden 32 × 2 layers, one thread): at 0.23 M edges streaming took 0.37 s and
#: 99 MiB over the loaded process, in memory (featurize + forward) 0.62 s and 432 MiB; at 1.4 M edges
#: 2.3 s / 296 MiB against 9.1 s / 1596 MiB (≈ 1.1 kB per edge). Dense block chunks (broadcast, no
#: index gathers or scatters) outweigh the recomputed edge updates; below ≈ 0.2 M edges batching many
#: small graphs in memory is what a zoo wants.
STREAM_EDGES = 200_000


def graph_embeddings(model, meta: dict, graphs: list[NeuralGraph], device, stream: bool | None = None,
                     progress: bool = False, chunk_edges: int | None = None, workers: int = 1):
    """The encoder's graph embeddings ``[len(graphs), d]`` (on CPU), in order. ``stream``: None
    streams graphs with at least ``STREAM_EDGES`` edges when the encoder can, True streams every
    graph (an encoder without ``forward_stream`` is an error), False none. Small graphs are batched."""
    import torch

    from .stream import encode_streamed
    enc = model.encoder
    can = hasattr(enc, "forward_stream")
    if stream and not can:
        raise InputError(f"encoder {meta['encoder']!r} has no streamed forward (--no-stream encodes in memory)")
    streamed = [bool(stream) if stream is not None else (can and g.num_edges >= STREAM_EDGES) for g in graphs]
    features = FeatureConfig(**meta["features"])
    out: list = [None] * len(graphs)
    small = [i for i, s in enumerate(streamed) if not s]
    model.eval()
    with torch.no_grad():
        for k in range(0, len(small), 32):
            idx = small[k:k + 32]
            batch = next(graph_batches([graphs[i] for i in idx], np.zeros(len(idx)), features, 32, False, None))
            for i, row in zip(idx, enc(batch.to(device))[1].cpu()):
                out[i] = row
        for i in (i for i, s in enumerate(streamed) if s):
            _, g = encode_streamed(enc, graphs[i], features, device, chunk_edges, progress=progress,
                                   label=f"encoding graph {i + 1}/{len(graphs)}", workers=workers)
            out[i] = g[0].cpu()
    return torch.stack(out) if out else torch.zeros(0, getattr(enc, "out_dim", 1))


def predict(ckpt, graphs: list[NeuralGraph], device: str = "auto", paths: list | None = None,
            stream: bool | None = None, progress: bool = False, workers: int = 1) -> list:
    """Each graph's prediction (class name or value). ``paths``: the graphs' model files, needed when
    the checkpoint was trained with probe features. Large graphs are encoded streamed (see
    :func:`graph_embeddings`; ``workers`` as in ``stream.encode_streamed``)."""
    import torch
    model, meta, dev = load_checkpoint(ckpt, device)
    features = FeatureConfig(**meta["features"])
    attach_all(graphs, paths, features.probes, inputs=features.probe_inputs)
    with torch.no_grad():
        out = model.head(graph_embeddings(model, meta, graphs, dev, stream, progress, workers=workers).to(dev)).cpu()
    pred = decode_predictions(meta["task"], out, meta["y_mean"], meta["y_std"]) if len(graphs) else np.zeros(0)
    if meta["task"] == "classification":
        return [meta["classes"][int(i)] for i in pred]
    return [float(v) for v in pred]


def embed(ckpt, graphs: list[NeuralGraph], device: str = "auto", paths: list | None = None,
          stream: bool | None = None, progress: bool = False, workers: int = 1) -> np.ndarray:
    """Graph embeddings: the embedding head's output if the checkpoint has one, else the encoder's.
    ``paths`` as in :func:`predict`; large graphs encoded streamed (see :func:`graph_embeddings`;
    ``workers`` as in ``stream.encode_streamed``)."""
    import torch
    model, meta, dev = load_checkpoint(ckpt, device)
    features = FeatureConfig(**meta["features"])
    attach_all(graphs, paths, features.probes, inputs=features.probe_inputs)
    if not graphs:
        return np.zeros((0, 1), np.float32)
    with torch.no_grad():
        g = graph_embeddings(model, meta, graphs, dev, stream, progress, workers=workers).to(dev)
        if meta["task"] == "embedding":
            g = model.head(g)
        return torch.nn.functional.normalize(g, dim=-1).cpu().numpy()
