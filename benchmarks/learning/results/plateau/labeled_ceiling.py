"""How well does measured accuracy on n labeled digits rank test accuracy? (a data-using reference point)"""
import sys, csv, numpy as np, onnxruntime as ort
from scipy.stats import kendalltau
sys.path.insert(0, "examples"); from make_zoo import digits
xtr, ytr, xte, yte = (t.numpy() for t in digits())
rng = np.random.default_rng(0)
for z in sys.argv[1:]:
    rows = [r for r in csv.DictReader(open(z + "/labels.csv")) if r["split"] == "test"]
    y = np.array([float(r["test_acc"]) for r in rows])
    P = {}
    for which, x in [("train", xtr), ("test", xte)]:
        out = []
        for r in rows:
            s = ort.InferenceSession(f"{z}/{r['model']}", providers=["CPUExecutionProvider"])
            name = s.get_inputs()[0].name
            out.append(np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]).argmax(1))
        P[which] = np.array(out)
    for which, lab in [("train", ytr), ("test", yte)]:
        for n in [16, 32, 64, 128, 256, 512]:
            taus = []
            for rep in range(50):
                idx = rng.choice(len(lab), n, replace=False)
                taus.append(kendalltau(y, (P[which][:, idx] == lab[idx]).mean(1))[0])
            print(z, which, n, "tau %.3f ± %.3f" % (np.mean(taus), np.std(taus)), flush=True)
