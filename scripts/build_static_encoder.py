#!/usr/bin/env python3
"""Distil a static (model2vec-style) encoder from the committed all-MiniLM-L6-v2 graph.

Why not the ``model2vec`` package's own distillation: ``model2vec.distill`` imports torch,
transformers and skeletoken and loads the model with ``AutoModel.from_pretrained`` (a hub
download or a PyTorch checkpoint); PyPI's torch is the 5 GB CUDA build. So this script does
the same steps itself on the committed ONNX graph (onnxruntime + numpy only), and writes
model2vec's on-disk format, which ``model2vec.StaticModel.from_pretrained(dir)`` and the
``model2vec-rs`` crate read.

What it does (the steps of ``model2vec.distill.distill_from_model``, pooling "mean")
-----------------------------------------------------------------------------------
1. The vocabulary: every token of ``models/encoder/tokenizer.json`` except ``[unusedN]``
   (model2vec's default ``token_remove_pattern``), in id order; the kept tokens are renumbered
   0..n in that order, and the tokenizer written next to the table gets that vocabulary, no
   post-processor (no [CLS]/[SEP]), no truncation and no padding.
2. Each token alone through the fp32 graph as ``[CLS] token [SEP]``; its vector is the mean of
   the last layer's hidden states over those three positions *before* the graph's L2
   normalisation (the graph's ``pool/mean_output``, exposed as an extra output here), as
   model2vec's ``create_embeddings`` takes it from the transformer. fp32 rows do not depend on
   their batch-mates, so the tokens are run in batches.
3. PCA to ``--dims`` (default 256): eigendecomposition of the covariance of the centred vectors,
   components sorted by variance, each component's sign fixed so that its largest-magnitude
   score is positive (as model2vec's ``_pca_fit_transform``).
4. Zipf/SIF weighting: the token of rank r (its position in the vocabulary, from 1) gets
   ``sif / (sif + p_r)`` with ``p_r`` proportional to ``1 / (r + 1)`` and ``sif = 1e-4``; the
   PCA scores are multiplied by it (model2vec's ``compute_weights``).
5. Stored as float16 (model2vec's default ``quantize_to``); the table is ~15 MB at 256 dims
   (float32 would be 30 MB; see ``checks.float16_vs_float32`` in the manifest for what f16 costs).

Inference (what ``model2vec.StaticModel.encode`` does and what Pointsman does in Rust,
``pointsman_core::encoder::statics``): tokenize without special tokens, keep the first
``max_tokens`` ids (default 8192), drop ``[UNK]``, average the rows, L2-normalise (all-zero for a
text with no known token).

Outputs in ``models/static/``: ``model.safetensors`` (tensor ``embeddings``, float16
[vocab, dims]), ``tokenizer.json``, ``config.json`` (model2vec's), ``manifest.json`` (dims,
vocabulary, the source encoder's files and hashes, this script, sha256 of every file, checks)
and ``fixture.json`` (prompts and their float64 reference vectors, read by the Rust test that
the served encoder reproduces them to 1e-5). Re-running the script rewrites the same bytes.

How to run (from the repository root; the packages of scripts/requirements-models.txt)::

    python3 -m venv .venv-models
    .venv-models/bin/pip install -r scripts/requirements-models.txt
    .venv-models/bin/python scripts/build_static_encoder.py [--dims 256] [--out models/static]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SIF_COEFFICIENT = 1e-4
REMOVE_PATTERN = r"\[unused\d+\]"
POOLED = "pool/mean_output"
MAX_TOKENS = 8192
FORMAT = "pointsman-static/1"


def log(msg: str) -> None:
    print(f"[build_static_encoder] {msg}", file=sys.stderr, flush=True)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def static_tokenizer(source: dict) -> tuple[dict, list[int]]:
    """The source tokenizer without [unusedN] tokens, renumbered, with no post-processor,
    truncation or padding. Returns it and, for each new id, the source id."""
    vocab: dict[str, int] = source["model"]["vocab"]
    remove = re.compile(REMOVE_PATTERN)
    kept = [(tok, i) for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]) if not remove.match(tok)]
    new_vocab = {tok: new for new, (tok, _) in enumerate(kept)}
    source_ids = [i for _, i in kept]
    tok = json.loads(json.dumps(source))
    tok["model"]["vocab"] = new_vocab
    tok["post_processor"] = None
    tok["truncation"] = None
    tok["padding"] = None
    added = []
    for a in tok["added_tokens"]:
        if a["content"] in new_vocab:
            a = dict(a)
            a["id"] = new_vocab[a["content"]]
            added.append(a)
    tok["added_tokens"] = added
    return tok, source_ids


def pooled_session(encoder_dir: Path):
    """An onnxruntime session of the fp32 graph with the un-normalised mean as an extra output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(encoder_dir / "model.onnx"))
    if not any(n.output and n.output[0] == POOLED for n in model.graph.node):
        raise SystemExit(f"{encoder_dir / 'model.onnx'} has no `{POOLED}` tensor (was it built by scripts/build_encoder.py?)")
    model.graph.output.append(onnx.helper.make_tensor_value_info(POOLED, onnx.TensorProto.FLOAT, ["batch", 384]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def token_vectors(sess, source_ids: list[int], cls: int, sep: int, batch: int = 512) -> np.ndarray:
    out = np.zeros((len(source_ids), 384), dtype=np.float32)
    for s in range(0, len(source_ids), batch):
        ids = np.array([[cls, t, sep] for t in source_ids[s : s + batch]], dtype=np.int64)
        mask = np.ones_like(ids)
        (pooled,) = sess.run([POOLED], {"input_ids": ids, "attention_mask": mask})
        out[s : s + len(ids)] = pooled
        if (s // batch) % 10 == 0:
            log(f"  {s + len(ids)}/{len(source_ids)} tokens")
    return np.nan_to_num(out)


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """model2vec's PCA (eigh of the covariance, sign-fixed), in float64."""
    x = x.astype(np.float64)
    xc = x - x.mean(axis=0)
    cov = (xc.T @ xc) / (x.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = np.clip(vals[::-1], 0, None), vecs[:, ::-1]
    comp = vecs[:, :k].T
    scores = xc @ comp.T
    idx = np.argmax(np.abs(scores), axis=0)
    scores = scores * np.sign(scores[idx, range(k)])
    return scores, float(vals[:k].sum() / vals.sum())


def zipf_sif_weights(n: int, sif: float = SIF_COEFFICIENT) -> np.ndarray:
    inv_rank = 1.0 / np.arange(2, n + 2)
    proba = inv_rank / inv_rank.sum()
    return sif / (sif + proba)


def encode(table: np.ndarray, tok, unk: int, text: str, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """The reference inference, float64: first max_tokens ids, [UNK] dropped, mean, L2 norm."""
    ids = [i for i in tok.encode(text, add_special_tokens=False).ids[:max_tokens] if i != unk]
    if not ids:
        return np.zeros(table.shape[1])
    v = table[ids].astype(np.float64).mean(axis=0)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def load_prompts(data_dir: Path, n: int) -> list[str]:
    out, seen = [], set()
    for name in ("zeroeval", "alpaca_eval2"):
        path = data_dir / name / "train.jsonl.gz"
        if not path.is_file():
            continue
        with gzip.open(path, "rt") as f:
            for line in f:
                r = json.loads(line)
                if r["prompt_id"] not in seen:
                    seen.add(r["prompt_id"])
                    out.append(r["prompt"])
                if len(out) >= n * (2 if name == "alpaca_eval2" else 1):
                    break
    return out


def fixture_prompts(data_dir: Path) -> list[str]:
    real = load_prompts(data_dir, 4)
    long_text = "\n".join(load_prompts(data_dir, 60))
    return [
        "A man is eating food.",
        "Write a Rust function that merges two sorted vectors, and explain its complexity.",
        "Ünïcödé, 字, emoji 🚀 and [UNK]-ish tokens: ☃☃☃",
        "",
        *real[:4],
        long_text,  # well over the 8192-token cap
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", type=Path, default=REPO_ROOT / "models" / "encoder")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "static")
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    args = ap.parse_args()

    import onnxruntime
    import safetensors
    from safetensors.numpy import save
    from tokenizers import Tokenizer

    enc_manifest = json.loads((args.encoder / "manifest.json").read_text())
    source_tok_bytes = (args.encoder / "tokenizer.json").read_bytes()
    graph_sha = sha256_file(args.encoder / "model.onnx")
    if graph_sha != enc_manifest["files"]["fp32"]["sha256"]:
        raise SystemExit(f"model.onnx sha256 {graph_sha} differs from the encoder manifest's")
    source_tok = json.loads(source_tok_bytes)
    vocab = source_tok["model"]["vocab"]
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]

    tok_json, source_ids = static_tokenizer(source_tok)
    log(f"vocabulary: {len(source_ids)} tokens ({len(vocab) - len(source_ids)} [unusedN] removed)")

    log("embedding every token alone through the fp32 graph")
    sess = pooled_session(args.encoder)
    vectors = token_vectors(sess, source_ids, cls, sep)

    log(f"PCA {vectors.shape[1]} -> {args.dims}")
    scores, explained = pca(vectors, args.dims)
    weights = zipf_sif_weights(len(source_ids))
    table64 = scores * weights[:, None]
    table = table64.astype(np.float16)
    if not np.isfinite(table).all():
        raise SystemExit("the table overflows float16")

    args.out.mkdir(parents=True, exist_ok=True)
    tok_bytes = (json.dumps(tok_json, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    atomic_write(args.out / "tokenizer.json", tok_bytes)
    atomic_write(args.out / "model.safetensors", save({"embeddings": table}))
    config = {
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "tokenizer_name": f"{enc_manifest['id']} (models/encoder)",
        "apply_pca": args.dims,
        "sif_coefficient": SIF_COEFFICIENT,
        "hidden_dim": args.dims,
        "seq_length": 1000000,
        "normalize": True,
        "pooling": "mean",
    }
    atomic_write(args.out / "config.json", json_bytes(config))

    tok = Tokenizer.from_file(str(args.out / "tokenizer.json"))
    unk = tok.token_to_id("[UNK]")

    # Checks: float16 against float32 on real prompts, and how the static vectors agree with the
    # source encoder's (cosines between prompt pairs, Spearman over pairs).
    prompts = load_prompts(args.data_dir, 150)
    checks: dict = {"pca_explained_variance": round(explained, 6)}
    if prompts:
        t32 = table64.astype(np.float32)
        cos16 = [float(encode(table, tok, unk, p) @ encode(t32, tok, unk, p)) for p in prompts]
        checks["float16_vs_float32"] = {"prompts": len(prompts), "cosine_min": round(min(cos16), 8), "cosine_mean": round(float(np.mean(cos16)), 8)}
        log(f"float16 vs float32 over {len(prompts)} prompts: cosine min {min(cos16):.8f}")

    fixture = []
    for p in fixture_prompts(args.data_dir):
        v = encode(table, tok, unk, p)
        n_tokens = len(tok.encode(p, add_special_tokens=False).ids)
        fixture.append({"prompt": p, "tokens": n_tokens, "vector": [float(f"{x:.9g}") for x in v]})
    atomic_write(args.out / "fixture.json", json_bytes({"max_tokens": MAX_TOKENS, "items": fixture}))

    files = {}
    for name in ("model.safetensors", "tokenizer.json", "config.json", "fixture.json"):
        files[name] = {"path": name, "sha256": sha256_file(args.out / name), "bytes": (args.out / name).stat().st_size}
    manifest = {
        "format": FORMAT,
        "id": f"{enc_manifest['id']}-static{args.dims}",
        "dimension": args.dims,
        "vocabulary": len(source_ids),
        "dtype": "float16",
        "tensor": "embeddings",
        "max_tokens": MAX_TOKENS,
        "pooling": "mean of the rows of the prompt's tokens (no special tokens, [UNK] dropped), L2-normalised",
        "files": files,
        "tokenizer": {"path": "tokenizer.json", "sha256": files["tokenizer.json"]["sha256"]},
        "source": {
            "encoder": enc_manifest["id"],
            "graph": "models/encoder/model.onnx",
            "graph_sha256": graph_sha,
            "tokenizer_sha256": sha256_bytes(source_tok_bytes),
            "pooled_output": POOLED,
        },
        "distillation": {
            "script": "scripts/build_static_encoder.py",
            "script_sha256": sha256_file(Path(__file__).resolve()),
            "removed_tokens": REMOVE_PATTERN,
            "token_input": "[CLS] token [SEP], mean over the three positions, not normalised",
            "pca_dims": args.dims,
            "sif_coefficient": SIF_COEFFICIENT,
            "weighting": "Zipf rank = vocabulary position; w = sif / (sif + p_rank)",
        },
        "built_with": {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "safetensors": safetensors.__version__},
        "checks": checks,
    }
    atomic_write(args.out / "manifest.json", json_bytes(manifest))
    log(f"wrote {args.out} ({files['model.safetensors']['bytes'] / 1e6:.1f} MB table)")


if __name__ == "__main__":
    main()
