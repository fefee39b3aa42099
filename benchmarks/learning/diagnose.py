"""Why does an encoder not fit its training set? Instrumented training on one population.

    python benchmarks/learning/diagnose.py DATASET --target task [--task classification]
        [--encoder ng-gnn] [--epochs 25] [--n-train 0] [--set key=value ...] [--threads 1] [--json]

Trains as ``train.train`` does (same model, input scales, optimizer, schedule, clipping) and
records, per step: the loss and the gradient norm of each parameter group (input embedding,
each layer, readout, head); per epoch: training accuracy / τ *in eval mode* on the whole training
set, and the spread of the graph embeddings across graphs relative to their mean (``spread`` =
mean over dims of std across graphs / RMS of the mean embedding: near 0 means every network
embeds to the same vector and the head has nothing to separate), also for the pooled node states
before the readout. At init it prints the scale of every input column after input scaling.
``--n-train N`` keeps the first N training graphs (overfit experiment); ``--set`` overrides
``TrainConfig`` fields (``lr=1e-3``, ``weight_decay=0``, ``hidden=64``…), ``FeatureConfig`` fields
(``probes=16``, ``probe_inputs=uniform``; probes are attached as training does), and experiments the
library does not have: ``warmup=N`` (linear warmup over N epochs, then the cosine), ``rx=ln|leaky``
(the readout MLP with a LayerNorm before its SiLU, or LeakyReLU instead of SiLU), ``eps=…`` (AdamW's
epsilon). The readout over the output neurons' states that ``pool_out=1`` once patched in is now the
encoder option ``pool_fixed=True`` (it also averages the input neurons). Per snapshot it also prints the
pooled vector's RMS, the readout's first-layer pre-activations (spread across graphs, fraction of units
below -4 on every graph: dead) and the logits' std across graphs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np


def _groups(model):
    names = {}
    for n, p in model.named_parameters():
        parts = n.split(".")
        key = ".".join(parts[:3]) if parts[1] == "layers" else ".".join(parts[:2])
        names.setdefault(key, []).append(p)
    return names


def _spread(z):
    """Mean over dims of the std across graphs, relative to the RMS of the mean vector."""
    mean = z.mean(0)
    return float(z.std(0).mean() / (mean.pow(2).mean().sqrt() + 1e-12))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--target", required=True)
    ap.add_argument("--task", default="classification")
    ap.add_argument("--encoder", default="ng-gnn")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--n-train", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--every", type=int, default=1, help="print every N-th epoch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    from nngraph.learn import train as T
    from nngraph.learn.checkpoint import GraphModel
    from nngraph.learn.dataset import load_dataset
    from nngraph.learn.featurize import feature_scales, featurize
    from nngraph.learn.checkpoint import readout_module as readout_module_
    torch.set_num_threads(args.threads)
    over = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    from nngraph.learn.featurize import FeatureConfig
    cfg = T.TrainConfig.for_encoder(     # as `ngraph train` configures it: the encoder's training defaults
        args.target, args.encoder, task=args.task, epochs=args.epochs, seed=args.seed, device="cpu",
        **{k: v for k, v in over.items() if k in T.TrainConfig.__dataclass_fields__
           or k in FeatureConfig.__dataclass_fields__})
    over = {k: v for k, v in over.items() if k not in T.TrainConfig.__dataclass_fields__
            and k not in FeatureConfig.__dataclass_fields__}
    data = load_dataset(args.dataset, progress=False)
    tr, te = data.split("train"), data.split("test")
    if args.n_train:
        tr = tr[:args.n_train]
    cfg = T.attach_training_probes(cfg, tr + te, note=lambda m: print(f"note: {m}", file=sys.stderr))
    y_tr, classes = T.encode_labels(tr, cfg)
    y_te, _ = T.encode_labels(te, cfg, classes)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = {"classification": "classification"}.get(cfg.task, "regression")
    out_dim = len(classes) if classes else 1
    mean, std = (float(y_tr.mean()), float(y_tr.std() or 1.0)) if cfg.task == "regression" else (0.0, 1.0)
    enc_cfg = cfg.encoder_config()
    enc_cfg.update({k: v for k, v in over.items() if not k.startswith("rn_") and k not in ("rx", "eps")})
    model = GraphModel.build(cfg.encoder, enc_cfg, head, out_dim, cfg.features, cfg.input_scaling,
                             readout_norm=cfg.readout_norm)
    if over.get("rx"):          # experiment: readout variants (ln: LayerNorm before the SiLU; leaky: LeakyReLU)
        ro = model.encoder.readout
        act = torch.nn.LeakyReLU(0.1) if over["rx"] == "leaky" else torch.nn.SiLU()
        mid = [torch.nn.LayerNorm(ro[0].out_features)] if over["rx"] == "ln" else []
        model.encoder.readout = torch.nn.Sequential(ro[0], *mid, act, ro[2])
    g_tr = [e.graph for e in tr]
    g_te = [e.graph for e in te]
    cache = {i: featurize(g, cfg.features) for i, g in enumerate(g_tr)}
    cache_te = {}
    if cfg.input_scaling:
        ns, es = feature_scales(list(cache.values()), cfg.features)
        model.encoder.input_node_scale.copy_(ns)
        model.encoder.input_edge_scale.copy_(es)
    if cfg.readout_norm and hasattr(model.encoder, "readout_shift"):
        shift, scale = T.readout_stats(model.encoder, list(cache.values()), torch.device("cpu"))
        model.encoder.readout_shift.copy_(shift)
        model.encoder.readout_scale.copy_(scale)
        print(f"readout norm: |shift| {float(shift.abs().mean()):.3f}, scale median {float(scale.median()):.1f}")
    mode = over.get("rn_mode")
    if mode:
        enc = model.encoder
        mod = readout_module_(enc)
        mod._forward_pre_hooks.clear()
        mom = float(over.get("rn_momentum", 0.1))

        def hook(module, a):
            p = a[0]
            if enc.training and len(p) > 1:
                m, v = p.detach().mean(0), p.detach().var(0, unbiased=False)
                enc.readout_shift.mul_(1 - mom).add_(mom * m)
                var = (1 / enc.readout_scale.pow(2)).mul_(1 - mom).add_(mom * v)
                enc.readout_scale.copy_(1 / (var.sqrt() + 1e-5))
                if mode == "batch":
                    return ((p - p.mean(0)) / (p.var(0, unbiased=False) + 1e-10).sqrt(),)
            return ((p - enc.readout_shift) * enc.readout_scale,)
        mod.register_forward_pre_hook(hook)
    # input scale after scaling
    from nngraph.learn.featurize import apply_scales
    from torch_geometric.data import Batch
    b = Batch.from_data_list([cache[i] for i in range(min(32, len(g_tr)))])
    if cfg.input_scaling:
        b = apply_scales(b, model.encoder.input_node_scale, model.encoder.input_edge_scale, cfg.features)
    xs = b.x.pow(2).mean(0).sqrt()
    ea = b.edge_attr.pow(2).mean(0).sqrt()
    print("input node col RMS (nonzero cols):", {i: round(float(v), 3) for i, v in enumerate(xs) if v > 0})
    print("input edge col RMS:", [round(float(v), 3) for v in ea])

    captured = {}

    def pooled_hook(mod, inp):
        captured["pooled"] = inp[0].detach()
    from nngraph.learn.checkpoint import readout_module
    enc_ = model.encoder
    rm = readout_module(enc_) or getattr(enc_, "readout", None) or getattr(enc_, "rho", None)
    rm._forward_pre_hooks.move_to_end(rm.register_forward_pre_hook(pooled_hook).id, last=False)  # raw pool

    first = rm[0] if isinstance(rm, torch.nn.Sequential) and isinstance(rm[0], torch.nn.Linear) else None
    if first is not None:
        first.register_forward_hook(lambda mod, a, out: captured.__setitem__("pre", out.detach()))

    def snapshot(graphs, c, y):
        out = T.model_outputs(model, graphs, cfg.features, torch.device("cpu"), cache=c)
        pooled, emb, pre = [], [], []
        model.eval()
        with torch.no_grad():
            for bb in T.graph_batches(graphs, np.zeros(len(graphs)), cfg.features, 64, False, None, cache=c):
                emb.append(model.encoder(bb)[1])
                pooled.append(captured["pooled"])
                pre.append(captured.get("pre", torch.zeros(1, 1)))
        emb, pooled, pre = torch.cat(emb), torch.cat(pooled), torch.cat(pre)
        pred = T.decode_predictions(cfg.task, out, mean, std)
        m = T.metrics(cfg.task, y, pred)
        # the readout's first layer: RMS of its input, its pre-activations' spread across graphs, and the
        # fraction of its units below -4 on every graph (SiLU ≈ 0 there: no gradient, no variation)
        extra = {"pooled_rms": float(pooled.pow(2).mean().sqrt()), "pre_spread": _spread(pre),
                 "pre_dead": float((pre < -4).all(0).float().mean()), "logit_std": float(out.std(0).mean())}
        snapshot.extra = extra
        return m, _spread(pooled), _spread(emb), float(T.task_loss(cfg.task, out, torch.as_tensor(
            (y - mean) / std if cfg.task == "regression" else y), cfg.rank_weight if cfg.task == "regression" else 0.0))

    m, sp, se, l0 = snapshot(g_tr, cache, y_tr)
    print(f"init: train {m} loss {l0:.4f} pooled spread {sp:.4f} embedding spread {se:.4f} {snapshot.extra}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            eps=float(over.get("eps", 1e-8)))
    sched = T.make_scheduler(opt, cfg, math.ceil(len(g_tr) / cfg.batch_size)) if hasattr(T, "make_scheduler") else \
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    per_step = hasattr(T, "make_scheduler")
    if over.get("warmup") and not per_step:     # experiment: linear warmup over N epochs, then the cosine
        w = int(over["warmup"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda ep: (ep + 1) / (w + 1) if ep < w else
                                                  0.5 * (1 + math.cos(math.pi * (ep - w) / max(cfg.epochs - w, 1))))
    groups = _groups(model)
    target = (y_tr - mean) / std if cfg.task == "regression" else y_tr
    log = []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        losses, gn = [], {k: [] for k in groups}
        for batch in T.graph_batches(g_tr, target, cfg.features, cfg.batch_size, True, rng, cache=cache):
            out = model(batch)
            loss = T.task_loss(cfg.task, out, batch.y, cfg.rank_weight if cfg.task == "regression" else 0.0)
            opt.zero_grad()
            loss.backward()
            for k, ps in groups.items():
                gn[k].append(float(torch.sqrt(sum((p.grad.pow(2).sum() for p in ps if p.grad is not None),
                                                  torch.tensor(0.0)))))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if per_step:
                sched.step()
            losses.append(float(loss.detach()))
        if not per_step:
            sched.step()
        T.refresh_batch_norms(model, T.graph_batches(g_tr, target, cfg.features, cfg.batch_size, False, rng,
                                                     cache=cache), torch.device("cpu"))
        rec = {"epoch": epoch + 1, "loss_first": losses[0], "loss_mean": float(np.mean(losses)),
               "grad": {k: float(np.mean(v)) for k, v in gn.items()}}
        if (epoch + 1) % args.every == 0 or epoch + 1 == cfg.epochs:
            mt, _, _, _ = snapshot(g_te, cache_te, y_te) if g_te else ({}, 0, 0, 0)
            m, sp, se, lt = snapshot(g_tr, cache, y_tr)
            rec.update({"train_eval": m, "train_eval_loss": lt, "test": mt, "pooled_spread": sp, "emb_spread": se,
                        **snapshot.extra})
            print(f"ep {epoch + 1:3d} loss {rec['loss_mean']:.4f} eval-loss {lt:.4f} train {m} test {mt} "
                  f"spread pooled {sp:.4f} emb {se:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"pooled-rms {rec['pooled_rms']:.2f} readout-pre spread {rec['pre_spread']:.4f} "
                  f"dead {rec['pre_dead']:.2f} logit-std {rec['logit_std']:.3f} "
                  f"grad {' '.join(f'{k.split(chr(46), 1)[1]}={v:.2e}' for k, v in rec['grad'].items())} "
                  f"[{time.perf_counter() - t0:.0f}s]", flush=True)
        log.append(rec)
    if args.json:
        print(json.dumps(log))


if __name__ == "__main__":
    main()
