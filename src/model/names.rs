//! Tensor names: Hugging Face ↔ GGUF. qforge uses the GGUF names internally.

use crate::error::{Error, Result};
use crate::model::arch::Arch;
use crate::model::ModelConfig;

/// Per-layer HF suffixes and their GGUF counterparts (the norms' are the architecture's:
/// [`ArchSpec::norm_names`](crate::model::arch::ArchSpec::norm_names)).
const LAYER_MAP: &[(&str, &str)] = &[
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// The linears of an architecture whose q/k/v and gate/up projections are fused (Phi-3), as
/// its Hugging Face checkpoints and llama.cpp's GGUF both keep them.
const FUSED_LAYER_MAP: &[(&str, &str)] = &[
    ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("mlp.gate_up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

const GLOBAL_MAP: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Tensors HF checkpoints may carry that hold nothing the text model needs: recomputed
/// buffers, and — only in a multimodal checkpoint (one whose config.json describes more than
/// a text model) — the vision (or audio) tower and projector, which llama.cpp's converter
/// leaves for a separate mmproj file. A text-only checkpoint that holds such tensors is not
/// the model its config says, so there they stay unknown (an error).
pub fn is_ignorable_hf(name: &str, multimodal: bool) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || multimodal
            && ["vision_tower.", "multi_modal_projector.", "audio_tower.", "embed_vision.", "embed_audio."]
                .iter()
                .any(|p| name.starts_with(p) || name.starts_with(&format!("model.{p}")))
}

/// A multimodal checkpoint's text-model tensor name as the text-only model has it: transformers
/// 4 writes `language_model.model.layers.0…`, transformers 5 `model.language_model.layers.0…`.
fn text_model_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains("language_model.") {
        std::borrow::Cow::Owned(name.replacen("language_model.", "", 1))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

fn layer_map(arch: Arch) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    let spec = arch.spec();
    let linears = if spec.fused_linears { FUSED_LAYER_MAP } else { LAYER_MAP };
    let moe: &[(&str, &str)] = spec.experts.as_ref().map_or(&[], |e| e.names);
    spec.norm_names.iter().chain(linears).chain(moe)
}

/// GGUF suffixes of an MoE layer's expert weights, all experts in one 3-D tensor each.
pub const EXPERT_TENSORS: [&str; 3] = ["ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"];

/// A GGUF 3-D expert tensor's layer and suffix (`blk.3.ffn_up_exps.weight` → 3,
/// `ffn_up_exps.weight`).
pub fn gguf_expert_tensor(name: &str) -> Option<(usize, &'static str)> {
    let (li, suffix) = name.strip_prefix("blk.")?.split_once('.')?;
    let s = EXPERT_TENSORS.iter().find(|s| **s == suffix)?;
    Some((li.parse().ok()?, s))
}

/// One expert's weight in Hugging Face names (`model.layers.3.mlp.experts.7.up_proj.weight`):
/// (layer, expert, the GGUF suffix of the 3-D tensor that holds it).
/// The module names are the architecture's (Mixtral: `block_sparse_moe.experts.7.w3`) or, for
/// every MoE family, those of [`hf_expert_module`].
pub fn hf_expert(name: &str, arch: Arch) -> Option<(usize, usize, &'static str)> {
    let e = arch.spec().experts.as_ref()?;
    let (li, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
    [(e.block, [e.gate, e.up, e.down]), MODULE_EXPERTS].iter().find_map(|(block, projs)| {
        let (ei, proj) = rest.strip_prefix(block)?.strip_prefix(".experts.")?.split_once('.')?;
        let proj = proj.strip_suffix(".weight")?;
        let suffix = projs.iter().position(|p| *p == proj).map(|i| EXPERT_TENSORS[i])?;
        Some((li.parse().ok()?, ei.parse().ok()?, suffix))
    })
}

/// Expert modules as transformers 5 and GPTQModel name them once the 3-D expert parameters
/// are split into one linear per expert (GPTQModel's defused MoE blocks), for every family.
const MODULE_EXPERTS: (&str, [&str; 3]) = ("mlp", ["gate_proj", "up_proj", "down_proj"]);

/// A Hugging Face name as the modules of transformers 5 (and GPTQModel, which loads quantized
/// checkpoints by module name) have it: an MoE block is `mlp` in every family
/// (`model.layers.0.block_sparse_moe.gate.weight` → `model.layers.0.mlp.gate.weight`).
pub fn hf_module_name(name: &str, arch: Arch) -> String {
    match arch.spec().experts.as_ref() {
        Some(e) if e.block != MODULE_EXPERTS.0 => {
            name.replacen(&format!(".{}.", e.block), &format!(".{}.", MODULE_EXPERTS.0), 1)
        }
        _ => name.to_string(),
    }
}

/// The module name GPTQModel gives expert `expert`'s part of `blk.{layer}.{suffix}`
/// (`model.layers.3.mlp.experts.7.up_proj`): the name its packed weights are stored and looked
/// up under, Mixtral's included (whose float checkpoints say `block_sparse_moe…w3`).
pub fn hf_expert_module(layer: usize, expert: usize, suffix: &str) -> Option<String> {
    let i = EXPERT_TENSORS.iter().position(|s| *s == suffix)?;
    Some(format!("model.layers.{layer}.{}.experts.{expert}.{}", MODULE_EXPERTS.0, MODULE_EXPERTS.1[i]))
}

/// The Hugging Face name of expert `expert`'s part of the GGUF tensor `blk.{layer}.{suffix}`.
pub fn hf_expert_name(arch: Arch, layer: usize, expert: usize, suffix: &str) -> Result<String> {
    let e = arch.spec().experts.as_ref().ok_or_else(|| Error::Unsupported(format!("{arch:?} has no experts")))?;
    let i = EXPERT_TENSORS
        .iter()
        .position(|s| *s == suffix)
        .ok_or_else(|| Error::Unsupported(format!("{suffix} is not an expert tensor")))?;
    let proj = [e.gate, e.up, e.down][i];
    Ok(format!("model.layers.{layer}.{}.experts.{expert}.{proj}.weight", e.block))
}

/// The fused linears of a layer (Phi-3) with their parts in row order: (fused GGUF suffix,
/// [(part suffix, rows)]). The parts are what the runtime and the methods compute with; the
/// gate/up weight's second part keeps the fused weight's name, `ffn_up.weight`.
pub fn fused_linears(cfg: &ModelConfig) -> Vec<(&'static str, Vec<(&'static str, usize)>)> {
    if !cfg.arch.spec().fused_linears {
        return Vec::new();
    }
    vec![
        (
            "attn_qkv.weight",
            vec![("attn_q.weight", cfg.q_dim()), ("attn_k.weight", cfg.kv_dim()), ("attn_v.weight", cfg.kv_dim())],
        ),
        ("ffn_up.weight", vec![("ffn_gate.weight", cfg.ffn_size), ("ffn_up.weight", cfg.ffn_size)]),
    ]
}

/// An MoE layer's 3-D expert tensors with their parts (one matrix per expert, named
/// `ffn_gate_exps.weight[3]`, the runtime's and the methods' names for them), in the shape of
/// [`fused_linears`].
pub fn expert_linears(cfg: &ModelConfig) -> Vec<(&'static str, Vec<(String, usize)>)> {
    let Some(m) = &cfg.moe else { return Vec::new() };
    EXPERT_TENSORS
        .iter()
        .map(|&t| {
            let rows = if t.starts_with("ffn_down") { cfg.hidden_size } else { m.expert_ffn };
            (t, (0..m.n_experts).map(|e| (expert_part(t, e), rows)).collect())
        })
        .collect()
}

/// Expert `e`'s matrix of the 3-D tensor `tensor` (a GGUF name or suffix).
pub fn expert_part(tensor: &str, e: usize) -> String {
    format!("{tensor}[{e}]")
}

/// The layer of an MoE router's name (`blk.3.ffn_gate_inp.weight` → 3).
pub fn router_layer(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.strip_suffix(".ffn_gate_inp.weight")?.parse().ok()
}

/// The 3-D tensor and expert of an expert's matrix name (`blk.0.ffn_up_exps.weight[3]`).
pub fn split_expert_part(name: &str) -> Option<(&str, usize)> {
    let (tensor, rest) = name.strip_suffix(']')?.rsplit_once('[')?;
    Some((tensor, rest.parse().ok()?))
}

/// The fused weight a part belongs to, by GGUF name (`blk.3.attn_k.weight` →
/// `blk.3.attn_qkv.weight`); `None` for a weight that is not part of a fused one.
pub fn fused_name_of(cfg: &ModelConfig, part: &str) -> Option<String> {
    let (prefix, suffix) = part.strip_prefix("blk.")?.split_once('.')?;
    fused_linears(cfg)
        .into_iter()
        .find(|(_, parts)| parts.iter().any(|(p, _)| *p == suffix))
        .map(|(fused, _)| format!("blk.{prefix}.{fused}"))
}

/// Every joined weight of a layer with its parts: fused linears and, with `experts`, the
/// 3-D expert tensors.
fn joined_linears(cfg: &ModelConfig, experts: bool) -> Vec<(&'static str, Vec<String>)> {
    let fused = fused_linears(cfg).into_iter().map(|(f, p)| (f, p.into_iter().map(|(n, _)| n.to_string()).collect()));
    let experts = if experts { expert_linears(cfg) } else { Vec::new() };
    fused.chain(experts.into_iter().map(|(f, p)| (f, p.into_iter().map(|(n, _)| n).collect()))).collect()
}

/// Give the parts of every joined weight in `map` (keyed by GGUF name) the joined weight's
/// entry (a planned GGML type applies to all rows of the weight, every expert's included).
pub fn extend_to_parts<T: Clone>(map: &mut std::collections::HashMap<String, T>, cfg: &ModelConfig) {
    for li in 0..cfg.n_layers {
        for (joined, parts) in joined_linears(cfg, true) {
            if let Some(v) = map.get(&format!("blk.{li}.{joined}")).cloned() {
                for p in parts {
                    map.insert(format!("blk.{li}.{p}"), v.clone());
                }
            }
        }
    }
}

/// Replace the parts of every fused linear in `results` (keyed by GGUF name) with one entry
/// for the fused weight, made by `concat` from the parts in row order. A fused weight with
/// only some of its parts present is an error (it could not be written).
/// With `experts`, an MoE layer's per-expert results are joined into its 3-D tensors too
/// (GGUF); without, they stay per expert (Hugging Face files hold one matrix per expert).
pub fn fuse_parts<T>(
    results: &mut std::collections::HashMap<String, T>,
    cfg: &ModelConfig,
    experts: bool,
    concat: impl Fn(&str, Vec<T>) -> Result<T>,
) -> Result<()> {
    for li in 0..cfg.n_layers {
        for (fused, parts) in joined_linears(cfg, experts) {
            let names: Vec<String> = parts.iter().map(|p| format!("blk.{li}.{p}")).collect();
            if !names.iter().any(|n| results.contains_key(n)) {
                continue;
            }
            let mut got = Vec::with_capacity(names.len());
            for n in &names {
                got.push(results.remove(n).ok_or_else(|| {
                    Error::tensor(n, "is missing from the results while other parts of its fused weight are there")
                })?);
            }
            let name = format!("blk.{li}.{fused}");
            let value = concat(&name, got)?;
            results.insert(name, value);
        }
    }
    Ok(())
}

/// Map a Hugging Face tensor name to its GGUF name.
pub fn hf_to_gguf(name: &str, arch: Arch) -> Result<String> {
    let name: &str = &text_model_name(name);
    if let Some((_, g)) = GLOBAL_MAP.iter().find(|(h, _)| *h == name) {
        return Ok(g.to_string());
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((idx, suffix)) = rest.split_once('.') {
            if let (Ok(i), Some((_, g))) = (idx.parse::<usize>(), layer_map(arch).find(|(h, _)| *h == suffix)) {
                return Ok(format!("blk.{i}.{g}"));
            }
        }
    }
    Err(Error::Unsupported(format!("cannot map tensor {name:?} to a GGUF name")))
}

/// Norm weights (HF or GGUF name): Gemma stores them as offsets from 1 in HF files.
pub fn is_norm_weight(name: &str) -> bool {
    name.ends_with("norm.weight")
}

/// GGUF tensors computed from config.json rather than stored in a Hugging Face checkpoint
/// (the RoPE divisors of `rope_scaling`): the HF writers leave them out.
pub fn is_generated_gguf(name: &str) -> bool {
    use crate::model::rope::{ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, ROPE_FREQS};
    [ROPE_FREQS, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT].contains(&name)
}

/// Map a GGUF tensor name back to its Hugging Face name.
pub fn gguf_to_hf(name: &str, arch: Arch) -> Result<String> {
    if let Some((h, _)) = GLOBAL_MAP.iter().find(|(_, g)| *g == name) {
        return Ok(h.to_string());
    }
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((idx, suffix)) = rest.split_once('.') {
            if let (Ok(i), Some((h, _))) = (idx.parse::<usize>(), layer_map(arch).find(|(_, g)| *g == suffix)) {
                return Ok(format!("model.layers.{i}.{h}"));
            }
        }
    }
    Err(Error::Unsupported(format!("cannot map GGUF tensor {name:?} to a Hugging Face name")))
}

/// Which q/k permutation (if any) a GGUF tensor of the `llama` architecture carries.
pub fn qk_heads(gguf_name: &str, n_heads: usize, n_kv_heads: usize) -> Option<usize> {
    if gguf_name.ends_with("attn_q.weight") || gguf_name.ends_with("attn_q.bias") {
        Some(n_heads)
    } else if gguf_name.ends_with("attn_k.weight") || gguf_name.ends_with("attn_k.bias") {
        Some(n_kv_heads)
    } else {
        None
    }
}

/// Row order of a q/k projection, HF rotate-half → llama.cpp interleaved: within each head,
/// the rows [first half | second half] become pairs (i, i + half). Returns, for each output
/// row, the source row it comes from. `rows` must be `n_heads * head_dim`.
pub fn rope_interleave_rows(rows: usize, n_heads: usize) -> Result<Vec<usize>> {
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        return Err(Error::InvalidModel(format!("{rows} q/k rows cannot be split into {n_heads} heads of even size")));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut src = Vec::with_capacity(rows);
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                src.push(h * head_dim + j * half + i);
            }
        }
    }
    Ok(src)
}

/// The inverse of [`rope_interleave_rows`]: interleaved → rotate-half.
pub fn rope_deinterleave_rows(rows: usize, n_heads: usize) -> Result<Vec<usize>> {
    let fwd = rope_interleave_rows(rows, n_heads)?;
    let mut inv = vec![0; rows];
    for (dst, &src) in fwd.iter().enumerate() {
        inv[src] = dst;
    }
    Ok(inv)
}

/// For a q/k projection whose rows must change layout (`from` → `to`), the source row of each
/// output row; `None` when the rows stay as they are.
pub fn row_order(
    gguf_name: &str,
    rows: usize,
    n_heads: usize,
    n_kv_heads: usize,
    from: crate::model::RopeLayout,
    to: crate::model::RopeLayout,
) -> Result<Option<Vec<usize>>> {
    use crate::model::RopeLayout;
    if from == to {
        return Ok(None);
    }
    let Some(heads) = qk_heads(gguf_name, n_heads, n_kv_heads) else { return Ok(None) };
    Ok(Some(match to {
        RopeLayout::Interleaved => rope_interleave_rows(rows, heads)?,
        RopeLayout::RotateHalf => rope_deinterleave_rows(rows, heads)?,
    }))
}

/// Rows of `data` (each `row_len` items) in the order `src` gives.
pub fn reorder_rows<T: Copy>(data: &[T], row_len: usize, src: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    for &s in src {
        out.extend_from_slice(&data[s * row_len..(s + 1) * row_len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "model.layers.3.self_attn.k_proj.weight",
            "model.layers.11.mlp.down_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "lm_head.weight",
        ] {
            assert_eq!(gguf_to_hf(&hf_to_gguf(hf, Arch::Llama).unwrap(), Arch::Llama).unwrap(), hf);
        }
        assert!(hf_to_gguf("model.layers.x.mlp.up_proj.weight", Arch::Llama).is_err());
        assert!(hf_to_gguf("vision_tower.weight", Arch::Llama).is_err());
        // The same HF norm is a different GGUF tensor in Gemma.
        let post = "model.layers.2.post_attention_layernorm.weight";
        assert_eq!(hf_to_gguf(post, Arch::Llama).unwrap(), "blk.2.ffn_norm.weight");
        assert_eq!(hf_to_gguf(post, Arch::Gemma2).unwrap(), "blk.2.post_attention_norm.weight");
        for g in ["blk.1.ffn_norm.weight", "blk.1.post_ffw_norm.weight", "blk.1.attn_q_norm.weight"] {
            assert_eq!(hf_to_gguf(&gguf_to_hf(g, Arch::Gemma3).unwrap(), Arch::Gemma3).unwrap(), g);
        }
    }

    #[test]
    fn interleave_matches_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2): for head_dim 4 the rows
        // [a0 a1 b0 b1] become [a0 b0 a1 b1].
        assert_eq!(rope_interleave_rows(4, 1).unwrap(), vec![0, 2, 1, 3]);
        assert_eq!(rope_interleave_rows(8, 2).unwrap(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let f = rope_interleave_rows(128, 2).unwrap();
        let inv = rope_deinterleave_rows(128, 2).unwrap();
        for r in 0..128 {
            assert_eq!(f[inv[r]], r);
        }
        assert!(rope_interleave_rows(6, 4).is_err());
    }
}
