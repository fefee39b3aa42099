"""How well does each test network's accuracy on n labeled digits rank its test accuracy? A data-using
reference point for what a data-free encoder's τ is worth (run from the repository root).

    python labeled_ceiling.py ZOO_DIR [ZOO_DIR ...]
"""
import csv
import sys

import numpy as np
import onnxruntime as ort
from scipy.stats import kendalltau

sys.path.insert(0, "examples")
from make_zoo import digits  # noqa: E402

splits = dict(zip(("train", "test"), [(x.numpy(), y.numpy()) for x, y in zip(*[iter(digits())] * 2)]))
rng = np.random.default_rng(0)
for zoo in sys.argv[1:]:
    rows = [r for r in csv.DictReader(open(f"{zoo}/labels.csv")) if r["split"] == "test"]
    y = np.array([float(r["test_acc"]) for r in rows])
    predicted = {which: [] for which in splits}
    for r in rows:                      # one session per network, each split in one batch (dynamic batch axis)
        session = ort.InferenceSession(f"{zoo}/{r['model']}", providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for which, (x, _) in splits.items():
            predicted[which].append(session.run(None, {name: x})[0].argmax(1))
    for which, (_, labels) in splits.items():
        right = np.array(predicted[which]) == labels          # [networks, digits]
        for n in [16, 32, 64, 128, 256, 512]:
            taus = [kendalltau(y, right[:, idx].mean(1))[0]
                    for idx in (rng.choice(len(labels), n, replace=False) for _ in range(50))]
            print(zoo, which, n, f"tau {np.mean(taus):.3f} ± {np.std(taus):.3f}", flush=True)
