"""Mini-INR classification: SIRENs each fitted to one scikit-learn digit image; label = the digit.

    python benchmarks/learning/make_inr.py OUT_DIR [--n 300] [--seed 0] [--size 16] [--test-fraction 0.2]

Each network is a SIREN [2, 32, 32, 1] (sine activations, ω₀ = 30 folded into the weights, so the
exported model is plain Gemm → Sin) mapping pixel coordinates in [-1, 1]² to intensity, fitted to
one 8×8 digit upsampled bilinearly to --size × --size: at 8×8 a SIREN fits the image after a few
steps and its weights stay next to their (independent, per-network) random init, so the population
would carry almost no class signal. Digits are drawn class-balanced from the 1797 images. All INRs
are fitted at once as one batched model, then exported to ONNX. Deterministic in --seed.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from make_freq import test_rows, write_population

LAYOUT = (2, 32, 32, 1)
OMEGA = 30.0
MIX = 0.25


def images(size: int, n: int, seed: int):
    """``n`` digit images upsampled to ``size``² and their classes, class-balanced, in [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    pick = np.array([rng.choice(np.flatnonzero(d.target == c)) for c in labels])
    x = torch.tensor(d.images[pick] / 16.0, dtype=torch.float32).unsqueeze(1)
    up = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    return up.reshape(n, size * size), labels, pick


def siren_init(n: int, g: torch.Generator, mix: float = 1.0):
    """SIREN init (Sitzmann et al.) with ω₀ folded in: first layer U(±ω₀/fan_in), then U(±√(6/fan_in)).

    ``mix`` blends one init shared by all ``n`` networks with one of their own, keeping the variance:
    √(1 − mix²)·shared + mix·own (0: one common init, 1: independent inits)."""
    def draw(k: int, shape):
        scale = OMEGA / LAYOUT[k] if len(shape) == 3 and k == 0 else \
            math.sqrt(6 / LAYOUT[k]) if len(shape) == 3 else 1 / math.sqrt(LAYOUT[k])
        return (torch.rand(*shape, generator=g) * 2 - 1) * scale

    shapes = [((b, a), (b,)) for a, b in zip(LAYOUT[:-1], LAYOUT[1:])]
    shared = [(draw(k, (1, *w)), draw(k, (1, *v))) for k, (w, v) in enumerate(shapes)]
    own = [(draw(k, (n, *w)), draw(k, (n, *v))) for k, (w, v) in enumerate(shapes)]
    keep = math.sqrt(1 - mix * mix)
    Ws = [(keep * sw + mix * ow).requires_grad_() for (sw, _), (ow, _) in zip(shared, own)]
    bs = [(keep * sb + mix * ob).requires_grad_() for (_, sb), (_, ob) in zip(shared, own)]
    return Ws, bs


class Sine(torch.nn.Module):
    """sin(x); exports as one ONNX Sin."""

    def forward(self, x):
        return torch.sin(x)


def forward(Ws, bs, x):
    h = x
    for i, (W, b) in enumerate(zip(Ws, bs)):
        h = torch.baddbmm(b[:, None, :], h, W.transpose(1, 2))
        if i < len(Ws) - 1:
            h = torch.sin(h)
    return h.squeeze(-1)


def fit(n: int, seed: int, size: int = 16, steps: int = 500, lr: float = 1e-3, mix: float = 1.0):
    """Fit ``n`` SIRENs at once; returns weights, biases, labels, digit indices, final MSEs and the
    mean relative weight change from init (how far the fit moved the weights) and the images the
    INRs render."""
    g = torch.Generator().manual_seed(seed)
    target, labels, pick = images(size, n, seed)
    lin = torch.linspace(-1, 1, size)
    grid = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(1, -1, 2).expand(n, -1, -1)
    Ws, bs = siren_init(n, g, mix)
    init = [W.detach().clone() for W in Ws]
    opt = torch.optim.Adam(Ws + bs, lr=lr)
    for _ in range(steps):
        loss = ((forward(Ws, bs, grid) - target) ** 2).mean(1)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        rendered = forward(Ws, bs, grid)
        mse = ((rendered - target) ** 2).mean(1)
        moved = float(np.mean([((W - W0).norm() / W0.norm()).item() for W, W0 in zip(Ws, init)]))
    return [W.detach() for W in Ws], [b.detach() for b in bs], labels, pick, mse, moved, rendered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=16, help="image side after bilinear upsampling of the 8×8 digit")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--init-mix", type=float, default=MIX,
                    help="0: every SIREN starts from one shared init, 1: independent inits (see the docstring)")
    args = ap.parse_args()
    if not 0 <= args.init_mix <= 1:
        ap.error("--init-mix must be in [0, 1]")
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    Ws, bs, labels, pick, mse, moved, rendered = fit(args.n, args.seed, args.size, args.steps, mix=args.init_mix)
    write_population(args.out, Ws, bs, args.test_fraction, lambda i: {
        "label": int(labels[i]), "digit_index": int(pick[i]), "fit_mse": round(float(mse[i]), 6)}, act=Sine,
        strata=labels)
    print(f"{args.n} SIRENs → {args.out} (fit MSE mean {float(mse.mean()):.5f}, max {float(mse.max()):.5f}; "
          f"weights moved {moved:.2f}× their init norm; the rendered images, classified by logistic "
          f"regression on the same split: test accuracy {render_check(rendered, labels, args.test_fraction):.3f})")


def render_check(rendered, labels, test_fraction: float) -> float:
    """Test accuracy of logistic regression on the images the INRs render (same train/test split):
    an upper reference for what the weights can tell, and a check the fits kept the digit."""
    from sklearn.linear_model import LogisticRegression
    test = test_rows(len(labels), test_fraction, labels)
    x, y = rendered.numpy(), np.asarray(labels)
    model = LogisticRegression(max_iter=2000).fit(x[~test], y[~test])
    return float(model.score(x[test], y[test]))


if __name__ == "__main__":
    main()
