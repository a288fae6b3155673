//! ONNX export of the router head, with no ONNX crate.
//!
//! The serving path already runs ONNX models through `ort`, so the head ships as one more
//! `.onnx` file: one runtime, one set of session knobs, and the same file works from Python for
//! offline analysis. Writing it needs only the public `onnx.proto` schema: it is vendored under
//! `proto/onnx/` and `build.rs` generates its `prost` messages ([`schema`]) with the pure-Rust
//! `protox` compiler, so the field numbers and types are ONNX's own and no ONNX crate (nor
//! `protoc`) is needed. Small constructors (`attr`, `int_attr`, `tensor`, `int64_tensor`, `node`,
//! `gemm`, `value_info`) keep the proto2 `Option` fields out of the graph-building code.
//!
//! The graph reproduces [`Mlp::predict`] op for op:
//!
//! ```text
//! embeddings [batch, D] -Gemm(W1, b1)-> Relu -> hidden [batch, H]
//! hidden -Gemm(Wq, bq)-> Sigmoid                 -> quality       [batch, M]
//! hidden -Gemm(Wt, bt)-> Exp -> Sub(1) -> Relu   -> output_tokens [batch, M]
//! ```
//!
//! `Relu` after `Sub` is the clamp at zero (`max(x, 0)`), the cheapest way to spell it in ONNX.
use pointsman_core::predictor::graph::{self, onnx as schema};
use prost::Message;

use super::{
    mlp::Mlp,
    shrink::{LocalPrior, Shrink},
    support::{Support, FAMILY_SUPPORT_OUTPUT, SUPPORT_OUTPUT},
};
use schema::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Name of the graph input: float `[batch, D]` prompt embeddings.
pub const INPUT_NAME: &str = "embeddings";
/// Name of the quality output: float `[batch, M]`, in `[0, 1]`.
pub const QUALITY_OUTPUT: &str = "quality";
/// Name of the token output: float `[batch, M]`, predicted output tokens (>= 0).
pub const TOKENS_OUTPUT: &str = "output_tokens";
/// ONNX opset the graph is written against.
pub const OPSET_VERSION: i64 = 17;
/// ONNX IR version of the file.
pub const IR_VERSION: i64 = 8;

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = DataType::Float as i32;
/// `TensorProto.DataType.INT64`.
const INT64: i32 = DataType::Int64 as i32;

/// An attribute named `name` of kind `kind`; the caller sets the matching value field.
fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(kind as i32), ..Default::default() }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { i: Some(i), ..attr(name, AttributeType::Int) }
}

/// The k most similar training prompts: `<out>_values` and `<out>_indices`.
fn topk(sim: &str, k: &str, out: &str) -> NodeProto {
    let mut n = node("TopK", &[sim, k], &format!("{out}_values"));
    n.output.push(format!("{out}_indices"));
    n.attribute = vec![int_attr("axis", 1), int_attr("largest", 1), int_attr("sorted", 1)];
    n
}

/// The rows of `table` at `indices`: [batch, k, M].
fn gather(table: &str, indices: &str, out: &str) -> NodeProto {
    let mut n = node("Gather", &[table, indices], out);
    n.attribute = vec![int_attr("axis", 0)];
    n
}

/// An int64 initializer of shape `[values.len()]`.
fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(INT64),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// The mean over the k neighbours (axis 1): [batch, M], or [batch, 1] with `keepdims`.
fn reduce_mean(input: &str, output: &str, keepdims: bool) -> NodeProto {
    let mut n = node("ReduceMean", &[input], output);
    n.attribute = vec![AttributeProto { ints: vec![1], ..attr("axes", AttributeType::Ints) }, int_attr("keepdims", i64::from(keepdims))];
    n
}

/// Serialises `mlp` as an ONNX model (`ModelProto` bytes) with `metadata` as its
/// `metadata_props`, in the order given (ONNX wants distinct keys; that is the caller's job).
pub fn export(mlp: &Mlp, metadata: &[(String, String)]) -> Vec<u8> {
    export_with_support(mlp, None, None, metadata)
}

/// Like [`export`], plus a third output `support` [batch, M] computed by `support`:
/// `MatMul(x, keys^T) -> TopK(k) -> Gather(weights) -> ReduceMean`, and with `shrink` the
/// quality and log-token outputs pulled towards the per-model means as [`Shrink::apply`] does.
pub fn export_with_support(mlp: &Mlp, support: Option<&Support>, shrink: Option<&Shrink>, metadata: &[(String, String)]) -> Vec<u8> {
    let (d, h, m) = (mlp.input_dim(), mlp.hidden_dim(), mlp.n_models());
    let mut initializer = vec![
        tensor("W1", &[d, h], mlp.w1().iter()),
        tensor("b1", &[h], mlp.b1().iter()),
        tensor("Wq", &[h, m], mlp.wq().iter()),
        tensor("bq", &[m], mlp.bq().iter()),
        tensor("Wt", &[h, m], mlp.wt().iter()),
        tensor("bt", &[m], mlp.bt().iter()),
        tensor("one", &[], [1.0f32].iter()),
    ];
    let mut node = vec![
        gemm(&[INPUT_NAME, "W1", "b1"], "hidden_pre"),
        node("Relu", &["hidden_pre"], "hidden"),
        gemm(&["hidden", "Wq", "bq"], "quality_logits"),
        node("Sigmoid", &["quality_logits"], if shrink.is_some() { "quality_raw" } else { QUALITY_OUTPUT }),
        gemm(&["hidden", "Wt", "bt"], if shrink.is_some() { "log_tokens_raw" } else { "log_tokens" }),
        node("Exp", &["log_tokens"], "tokens_plus_one"),
        node("Sub", &["tokens_plus_one", "one"], "tokens_raw"),
        node("Relu", &["tokens_raw"], TOKENS_OUTPUT),
    ];
    let mut output = vec![value_info(QUALITY_OUTPUT, m), value_info(TOKENS_OUTPUT, m)];
    // The support nodes go first: the local prior reads their similarities.
    let mut front = Vec::new();
    if let Some(s) = support {
        let keys_t = s.keys.t().as_standard_layout().to_owned();
        initializer.push(tensor("support_keys_t", &[d, s.keys.nrows()], keys_t.iter()));
        initializer.push(tensor("support_weights", &[s.weights.nrows(), m], s.weights.iter()));
        initializer.push(int64_tensor("support_k", &[s.k as i64]));
        front.push(node_n("MatMul", &[INPUT_NAME, "support_keys_t"], "support_sim"));
        if s.is_blocked() {
            // Per block: the k of its keys nearest the prompt. Their weights averaged, summed over
            // the blocks, are the support (a block's rows are 0 outside its models); their mean
            // similarity, spread to the block's models by the family table, is `family_support`.
            let (mut parts, mut near) = (Vec::new(), Vec::new());
            for (bi, b) in s.blocks.iter().enumerate() {
                let name = |what: &str| format!("support_{what}_{bi}");
                initializer.push(int64_tensor(&name("start"), &[b.start as i64]));
                initializer.push(int64_tensor(&name("end"), &[b.end as i64]));
                initializer.push(int64_tensor(&name("k"), &[s.k.min(b.end - b.start).max(1) as i64]));
                front.extend([
                    node_n("Slice", &["support_sim", &name("start"), &name("end"), "support_axis_1"], &name("sim")),
                    topk(&name("sim"), &name("k"), &name("top")),
                    node_n("Add", &[&format!("{}_indices", name("top")), &name("start")], &name("keys")),
                    gather("support_weights", &name("keys"), &name("rows")),
                    reduce_mean(&name("rows"), &name("mean"), false),
                    reduce_mean(&format!("{}_values", name("top")), &name("nearness"), true),
                ]);
                parts.push(name("mean"));
                near.push(name("nearness"));
            }
            initializer.push(int64_tensor("support_axis_1", &[1]));
            initializer.push(tensor("support_family_table", &[s.blocks.len(), m], s.family_table().iter()));
            let mut concat = node_n("Concat", &near.iter().map(String::as_str).collect::<Vec<_>>(), "support_family_nearness");
            concat.attribute = vec![int_attr("axis", 1)];
            front.extend([
                node_n("Sum", &parts.iter().map(String::as_str).collect::<Vec<_>>(), SUPPORT_OUTPUT),
                concat,
                node_n("MatMul", &["support_family_nearness", "support_family_table"], FAMILY_SUPPORT_OUTPUT),
            ]);
            output.push(value_info(FAMILY_SUPPORT_OUTPUT, m));
        } else {
            front.extend([
                topk("support_sim", "support_k", "support_top"),
                gather("support_weights", "support_top_indices", "support_rows"),
                reduce_mean("support_rows", SUPPORT_OUTPUT, false),
            ]);
        }
        output.push(value_info(SUPPORT_OUTPUT, m));
    }
    if let Some(s) = shrink {
        let keep = s.weight.mapv(|w| 1.0 - w);
        let prior_t = &s.prior_log_tokens * &s.token_weight.mapv(|w| 1.0 - w);
        initializer.push(tensor("shrink_weight", &[m], s.weight.iter()));
        initializer.push(tensor("shrink_weight_tokens", &[m], s.token_weight.iter()));
        initializer.push(tensor("shrink_prior_log_tokens", &[m], prior_t.iter()));
        let mut shrink_nodes = Vec::new();
        // The quality prior: per prompt from the neighbours, or each model's global mean.
        let prior = match (&s.local, support) {
            (Some(l), Some(_)) => {
                let kappa = ndarray::Array1::from(l.kappa.clone());
                let kappa_prior = &s.prior_quality * &kappa;
                initializer.push(tensor("shrink_keep", &[m], keep.iter()));
                initializer.push(tensor("local_quality_sum", &[l.keys, m], l.quality_sum.iter()));
                initializer.push(tensor("local_count", &[l.keys, m], l.count.iter()));
                initializer.push(tensor("local_kappa_prior", &[m], kappa_prior.iter()));
                initializer.push(tensor("local_kappa", &[m], kappa.iter()));
                initializer.push(int64_tensor("local_keys", &[l.keys as i64]));
                initializer.push(int64_tensor("axis_1", &[1]));
                // Per block of the memory: its keys' similarities, the k_max nearest, and each of
                // the block's models' observed quality and count over its own k of them (a rank
                // mask [k_max, M], 1 where rank r < k[m] and m searches this block).
                let (mut sums, mut counts, mut token_sums) = (Vec::new(), Vec::new(), Vec::new());
                let with_tokens = !l.token_models.is_empty();
                if with_tokens {
                    let flag = ndarray::Array1::from_shape_fn(m, |j| if l.token_models.contains(&j) { 1.0f32 } else { 0.0 });
                    let kappa_tokens = &ndarray::Array1::from(l.mean_tokens.clone()) * &kappa;
                    initializer.push(tensor("local_token_sum", &[l.keys, m], l.token_sum.iter()));
                    initializer.push(tensor("local_kappa_mean_tokens", &[m], kappa_tokens.iter()));
                    initializer.push(tensor("local_token_flag", &[m], flag.iter()));
                    initializer.push(tensor("local_token_keep", &[m], flag.mapv(|f| 1.0 - f).iter()));
                }
                for (bi, b) in l.blocks.iter().enumerate() {
                    let k_max = b.k_max(&l.k);
                    let mask =
                        ndarray::Array2::from_shape_fn((k_max, m), |(r, j)| if b.models.contains(&j) && r < l.k[j] { 1.0f32 } else { 0.0 });
                    let name = |what: &str| format!("local_{what}_{bi}");
                    initializer.push(int64_tensor(&name("start"), &[b.start as i64]));
                    initializer.push(int64_tensor(&name("end"), &[b.end as i64]));
                    initializer.push(int64_tensor(&name("k"), &[k_max as i64]));
                    initializer.push(tensor(&name("rank_mask"), &[k_max, m], mask.iter()));
                    shrink_nodes.extend([
                        node_n("Slice", &["support_sim", &name("start"), &name("end"), "axis_1"], &name("sim")),
                        topk(&name("sim"), &name("k"), &name("top")),
                        node_n("Add", &[&format!("{}_indices", name("top")), &name("start")], &name("keys")),
                    ]);
                    let mut tables = vec![("local_quality_sum", "sum", &mut sums), ("local_count", "n", &mut counts)];
                    if with_tokens {
                        tables.push(("local_token_sum", "t", &mut token_sums));
                    }
                    for (table, what, list) in tables {
                        let mut reduce = node_n("ReduceSum", &[&name(&format!("{what}_masked")), "axis_1"], &name(what));
                        reduce.attribute = vec![int_attr("keepdims", 0)];
                        shrink_nodes.extend([
                            gather(table, &name("keys"), &name(&format!("{what}_rows"))),
                            node_n("Mul", &[&name(&format!("{what}_rows")), &name("rank_mask")], &name(&format!("{what}_masked"))),
                            reduce,
                        ]);
                        list.push(name(what));
                    }
                }
                sums.push("local_kappa_prior".into());
                counts.push("local_kappa".into());
                shrink_nodes.extend([
                    node_n("Sum", &sums.iter().map(String::as_str).collect::<Vec<_>>(), "local_num"),
                    node_n("Sum", &counts.iter().map(String::as_str).collect::<Vec<_>>(), "local_den"),
                    node_n("Div", &["local_num", "local_den"], "local_quality"),
                    node_n("Mul", &["local_quality", "shrink_keep"], "quality_prior"),
                ]);
                if with_tokens {
                    // Tokens of `token_models`: the same neighbours' mean tokens, in log space.
                    token_sums.push("local_kappa_mean_tokens".into());
                    shrink_nodes.extend([
                        node_n("Sum", &token_sums.iter().map(String::as_str).collect::<Vec<_>>(), "local_token_num"),
                        node_n("Div", &["local_token_num", "local_den"], "local_tokens"),
                        node_n("Add", &["local_tokens", "one"], "local_tokens_plus_one"),
                        node_n("Log", &["local_tokens_plus_one"], "local_log_tokens"),
                        node_n("Mul", &["local_log_tokens", "local_token_flag"], "local_log_tokens_used"),
                    ]);
                }
                "quality_prior"
            }
            _ => {
                let prior_q = &s.prior_quality * &keep;
                initializer.push(tensor("shrink_prior_quality", &[m], prior_q.iter()));
                "shrink_prior_quality"
            }
        };
        shrink_nodes.extend([
            node_n("Mul", &["quality_raw", "shrink_weight"], "quality_scaled"),
            node_n("Add", &["quality_scaled", prior], QUALITY_OUTPUT),
            node_n("Mul", &["log_tokens_raw", "shrink_weight_tokens"], "log_tokens_scaled"),
        ]);
        if s.local.as_ref().is_some_and(|l| !l.token_models.is_empty()) && support.is_some() {
            shrink_nodes.extend([
                node_n("Add", &["log_tokens_scaled", "shrink_prior_log_tokens"], "log_tokens_own"),
                node_n("Mul", &["log_tokens_own", "local_token_keep"], "log_tokens_kept"),
                node_n("Add", &["log_tokens_kept", "local_log_tokens_used"], "log_tokens"),
            ]);
        } else {
            shrink_nodes.push(node_n("Add", &["log_tokens_scaled", "shrink_prior_log_tokens"], "log_tokens"));
        }
        // NOTE: inserted before the token nodes that read `log_tokens`.
        let at = node.iter().position(|n| n.op_type() == "Exp").expect("the graph has the token Exp node. This is a bug.");
        node.splice(at..at, shrink_nodes);
    }
    front.append(&mut node);
    let node = front;
    let graph = GraphProto {
        node,
        name: Some("pointsman_router_head".into()),
        initializer,
        doc_string: Some("Per-model quality and output tokens from a prompt embedding.".into()),
        input: vec![value_info(INPUT_NAME, d)],
        output,
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: None, version: Some(OPSET_VERSION) }],
        producer_name: Some("pointsman".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        model_version: Some(1),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(key, value)| StringStringEntryProto { key: Some(key.clone()), value: Some(value.clone()) })
            .collect(),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Reads a head written by [`export_with_support`] back: the MLP, and the support index and
/// shrinkage when the graph has them (used to add a model without retraining the others).
pub fn import(bytes: &[u8]) -> Result<(Mlp, Option<Support>, Option<Shrink>), super::LearningError> {
    use ndarray::{Array1, Array2};
    let graph = graph::decode(bytes)?;
    let init = graph::Initializers(&graph);
    let (mat, vec) = (|name: &str| init.matrix(name), |name: &str| init.vector(name));
    let mlp = Mlp::from_parts(mat("W1")?, vec("b1")?, mat("Wq")?, vec("bq")?, mat("Wt")?, vec("bt")?)?;
    let support = match init.support_k()? {
        Some(k) => {
            let keys = mat("support_keys_t")?.t().as_standard_layout().to_owned();
            let weights = mat("support_weights")?;
            let blocks = init.support_blocks(keys.nrows(), weights.ncols())?;
            Some(Support { keys, weights, k, blocks })
        }
        None => None,
    };
    let shrink = match init.find("shrink_weight") {
        Some((_, w)) => {
            let w = Array1::from(w);
            // Heads from before separate token weights use the quality weight for both.
            let wt = init.find("shrink_weight_tokens").map_or_else(|| w.clone(), |(_, v)| Array1::from(v));
            let undo = |name: &str, a: &Array1<f32>| -> Result<Array1<f32>, super::LearningError> {
                let v = vec(name)?;
                Ok(ndarray::Zip::from(&v).and(a).map_collect(|&p, &a| if a < 1.0 { p / (1.0 - a) } else { 0.0 }))
            };
            let local = match (init.find("local_kappa"), init.int64("local_keys")) {
                (Some((_, kappa)), Some(keys)) => {
                    let (blocks, k) = init.local_blocks(kappa.len())?;
                    let quality_sum = mat("local_quality_sum")?;
                    let m = quality_sum.ncols();
                    // kNN tokens, where the graph has them.
                    let (token_models, token_sum, mean_tokens) = match init.token_models() {
                        Some(token_models) => {
                            let kappa_tokens = vec("local_kappa_mean_tokens")?;
                            let mean = kappa_tokens.iter().zip(&kappa).map(|(t, k)| t / k.max(f32::MIN_POSITIVE)).collect();
                            (token_models, mat("local_token_sum")?, mean)
                        }
                        None => (Vec::new(), Array2::zeros((quality_sum.nrows(), m)), vec![0.0; m]),
                    };
                    Some(LocalPrior {
                        k,
                        keys: keys.max(0) as usize,
                        blocks,
                        quality_sum,
                        count: mat("local_count")?,
                        kappa,
                        token_models,
                        token_sum,
                        mean_tokens,
                    })
                }
                _ => None,
            };
            let prior_quality = match &local {
                Some(l) => vec("local_kappa_prior")? / &Array1::from(l.kappa.iter().map(|k| k.max(f32::MIN_POSITIVE)).collect::<Vec<_>>()),
                None => undo("shrink_prior_quality", &w)?,
            };
            Some(Shrink { prior_quality, prior_log_tokens: undo("shrink_prior_log_tokens", &wt)?, weight: w, token_weight: wt, local })
        }
        None => None,
    };
    Ok((mlp, support, shrink))
}

/// A float initializer; `raw_data` holds the values little-endian, row-major.
fn tensor<'a>(name: &str, dims: &[usize], values: impl Iterator<Item = &'a f32>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&v| v as i64).collect(),
        data_type: Some(FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn node_n(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
    node(op_type, inputs, output)
}

fn node(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: Some(format!("{op_type}_{output}")),
        op_type: Some(op_type.into()),
        ..Default::default()
    }
}

/// `Y = A B + C` with every attribute spelled out (they are the defaults), so the file says
/// what it computes without the reader knowing Gemm's defaults.
fn gemm(inputs: &[&str], output: &str) -> NodeProto {
    let float = |name: &str, f| AttributeProto { f: Some(f), ..attr(name, AttributeType::Float) };
    let mut gemm = node("Gemm", inputs, output);
    gemm.attribute = vec![float("alpha", 1.0), float("beta", 1.0), int_attr("transA", 0), int_attr("transB", 0)];
    gemm
}

/// A float `[batch, width]` graph input or output; `batch` is symbolic.
fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dim = |value| tensor_shape_proto::Dimension { value: Some(value), denotation: None };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(tensor_shape_proto::dimension::Value::DimParam("batch".into())),
                        dim(tensor_shape_proto::dimension::Value::DimValue(width as i64)),
                    ],
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array2};

    use super::*;

    #[test]
    fn export_round_trips_through_the_schema() {
        let mlp = Mlp::from_parts(
            Array2::from_shape_fn((3, 2), |(i, j)| (i * 2 + j) as f32 - 2.5),
            Array1::from_vec(vec![0.1, -0.2]),
            Array2::from_elem((2, 4), 0.5),
            Array1::from_elem(4, -1.0),
            Array2::from_elem((2, 4), 0.25),
            Array1::from_elem(4, 5.0),
        )
        .expect("valid shapes");
        let meta = vec![("models".to_string(), "[\"a\",\"b\",\"c\",\"d\"]".to_string())];
        let bytes = export(&mlp, &meta);
        let model = ModelProto::decode(bytes.as_slice()).expect("decodes");
        assert_eq!((model.ir_version(), model.opset_import[0].version()), (IR_VERSION, OPSET_VERSION));
        assert_eq!(model.metadata_props[0].key(), "models");
        let graph = model.graph.expect("graph");
        let w1 = &graph.initializer[0];
        assert_eq!((w1.name(), w1.data_type(), w1.dims.as_slice()), ("W1", FLOAT, [3i64, 2].as_slice()));
        let values: Vec<f32> = w1.raw_data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(values, [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]);
        assert_eq!(graph.input[0].name(), INPUT_NAME);
        let trans_a = &graph.node[0].attribute[2];
        // Explicit presence: a zero-valued attribute is still on the wire.
        assert_eq!((trans_a.name(), trans_a.r#type(), trans_a.i), ("transA", AttributeType::Int, Some(0)));
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
        assert_eq!(outputs, [QUALITY_OUTPUT, TOKENS_OUTPUT]);
    }
}
