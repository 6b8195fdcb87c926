//! The forward pass of every architecture in the table (model::arch): RMSNorm, RoPE
//! (optionally scaled: linear, llama3, yarn), grouped-query causal attention with a KV cache
//! (Qwen3/Gemma 3: q/k heads RMS-normed first; Gemma: sliding-window layers, soft-capped
//! scores and logits, sandwich norms, scaled embeddings), SwiGLU or GeGLU. Everything is
//! computed in f32, following the Hugging Face reference implementation's order of operations.

use std::collections::HashMap;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::matrix::Matrix;
use super::moe::{ExpertWeights, MoeFfn};
use super::simd;
use crate::error::{Error, Result};
use crate::model::arch::Activation;
use crate::model::names;
use crate::model::rope::RopeScaling;
use crate::model::{ModelConfig, ModelFile, RopeLayout, TensorRef};

struct Layer<'a> {
    attn_norm: Vec<f32>,
    wq: Matrix<'a>,
    wk: Matrix<'a>,
    wv: Matrix<'a>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// Per-head RMSNorm weights of q and k (Qwen3).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Matrix<'a>,
    /// Norms of the attention and feed-forward outputs (Gemma's sandwich norms).
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn: Ffn<'a>,
}

/// A decoder layer's feed-forward block. (The dense variant stays inline: it is the common
/// case, and one per layer.)
#[allow(clippy::large_enum_variant)]
enum Ffn<'a> {
    /// down(act(gate·x) ⊙ up·x)
    Dense(ExpertWeights<'a>),
    /// A mixture of experts (Mixtral, Qwen MoE).
    Moe(Box<MoeFfn<'a>>),
}

impl<'a> Layer<'a> {
    /// The linears calibration and the methods work on, in order (q, k, v, o, then gate,
    /// up, down of the dense block or of each expert and the shared expert; not the router).
    fn linears(&self) -> Vec<&Matrix<'a>> {
        let mut v = vec![&self.wq, &self.wk, &self.wv, &self.wo];
        match &self.ffn {
            Ffn::Dense(w) => v.extend([&w.gate, &w.up, &w.down]),
            Ffn::Moe(m) => v.extend(m.linears()),
        }
        v
    }

    fn linears_mut(&mut self) -> Vec<&mut Matrix<'a>> {
        let mut v = vec![&mut self.wq, &mut self.wk, &mut self.wv, &mut self.wo];
        match &mut self.ffn {
            Ffn::Dense(w) => v.extend([&mut w.gate, &mut w.up, &mut w.down]),
            Ffn::Moe(m) => v.extend(m.linears_mut()),
        }
        v
    }
}

pub struct LlamaModel<'a> {
    pub config: ModelConfig,
    rope_layout: RopeLayout,
    embed: Matrix<'a>,
    layers: Vec<Layer<'a>>,
    norm: Vec<f32>,
    /// `None` when the output projection is tied to the embeddings.
    output: Option<Matrix<'a>>,
    /// inv_freq[i] = theta^(-2i/head_dim), in f32 as PyTorch computes it.
    inv_freq: Vec<f32>,
    /// LongRoPE's frequencies past the original context (its length first): a run of
    /// positions reaching past it rotates with these, as llama.cpp and transformers choose for
    /// one forward pass. Generation that crosses the threshold keeps the keys it cached with
    /// the short factors, as llama.cpp does (transformers recomputes the prefix).
    long_inv_freq: Option<(usize, Vec<f32>)>,
    /// The sliding-window layers' own frequencies (Gemma 3's local RoPE base, unscaled).
    swa_inv_freq: Option<Vec<f32>>,
    /// cos and sin are multiplied by this (YaRN's attention scale; 1 otherwise).
    rope_scale: f32,
}

/// cos/sin of a run of positions (rope_dim/2 values per position): the global layers' and,
/// where the model has them, the sliding-window layers' own.
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    swa: Option<(Vec<f32>, Vec<f32>)>,
}

impl RopeTables {
    /// The tables layer `li` of `cfg` rotates with.
    fn for_layer(&self, cfg: &ModelConfig, li: usize) -> (&[f32], &[f32]) {
        match &self.swa {
            Some((c, s)) if cfg.attn.is_swa(li) => (c, s),
            _ => (&self.cos, &self.sin),
        }
    }
}

/// Keys and values of every layer for the positions seen so far.
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(config: &ModelConfig, capacity: usize) -> KvCache {
        let kv_dim = config.kv_dim();
        KvCache {
            k: (0..config.n_layers).map(|_| Vec::with_capacity(capacity * kv_dim)).collect(),
            v: (0..config.n_layers).map(|_| Vec::with_capacity(capacity * kv_dim)).collect(),
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            b.clear();
        }
        self.len = 0;
    }
}

fn vector(t: &TensorRef<'_>) -> Result<Vec<f32>> {
    t.to_f32()
}

impl<'a> LlamaModel<'a> {
    pub fn load(file: &'a ModelFile) -> Result<LlamaModel<'a>> {
        file.check_tensors()?;
        let tensors = file.tensors()?;
        let get = |name: &str| -> Result<&TensorRef<'a>> {
            tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| Error::InvalidModel(format!("tensor {name} is missing")))
        };
        let mat = |name: &str| -> Result<Matrix<'a>> { Matrix::from_tensor(get(name)?) };
        let vec_ = |name: &str| -> Result<Vec<f32>> { vector(get(name)?) };
        let cfg = file.config().clone();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            // A vector the architecture has (`present`), or none.
            let optional = |present: bool, s: &str| -> Result<Option<Vec<f32>>> {
                if present {
                    Ok(Some(vec_(&n(s))?))
                } else {
                    Ok(None)
                }
            };
            let spec = cfg.arch.spec();
            let bias = |s: &str| optional(spec.qkv_bias, s);
            let qk_norm = |s: &str| optional(spec.qk_norm, s);
            let sandwich = |s: &str| optional(spec.sandwich_norms, s);
            // Fused weights (Phi-3) are computed with as their parts, so that everything
            // downstream (calibration, GPTQ, AWQ) sees the usual linears.
            let mut fused: Vec<Matrix<'a>> = Vec::new();
            for (f, parts) in names::fused_linears(&cfg) {
                let parts: Vec<(String, usize)> = parts.iter().map(|(p, r)| (n(p), *r)).collect();
                fused.extend(mat(&n(f))?.split_rows(&parts)?);
            }
            let mut linear = |s: &str| -> Result<Matrix<'a>> {
                match fused.iter().position(|m| m.name == n(s)) {
                    Some(i) => Ok(fused.swap_remove(i)),
                    None => mat(&n(s)),
                }
            };
            layers.push(Layer {
                q_norm: qk_norm("attn_q_norm.weight")?,
                k_norm: qk_norm("attn_k_norm.weight")?,
                attn_norm: vec_(&n("attn_norm.weight"))?,
                wq: linear("attn_q.weight")?,
                wk: linear("attn_k.weight")?,
                wv: linear("attn_v.weight")?,
                bq: bias("attn_q.bias")?,
                bk: bias("attn_k.bias")?,
                bv: bias("attn_v.bias")?,
                wo: mat(&n("attn_output.weight"))?,
                post_attn_norm: sandwich("post_attention_norm.weight")?,
                post_ffn_norm: sandwich("post_ffw_norm.weight")?,
                ffn_norm: vec_(&n("ffn_norm.weight"))?,
                ffn: match &cfg.moe {
                    Some(moe) => Ffn::Moe(Box::new(MoeFfn::load(i, moe, &tensors)?)),
                    None => Ffn::Dense(ExpertWeights {
                        gate: linear("ffn_gate.weight")?,
                        up: linear("ffn_up.weight")?,
                        down: mat(&n("ffn_down.weight"))?,
                    }),
                },
            });
        }
        let output = if cfg.tie_embeddings { None } else { Some(mat("output.weight")?) };
        // RoPE turns the first rope_dim dimensions of each head (all but in Phi-4-mini).
        let (rot, half) = (cfg.rope_dim, cfg.rope_dim / 2);
        // RoPE scaling as llama.cpp applies it: each frequency divided by its rope_freqs.weight
        // value (llama3) or YaRN's blend, every one multiplied by freq_scale (linear).
        let divisors = if cfg.has_rope_freqs() {
            Some(vec_(crate::model::rope::ROPE_FREQS)?)
        } else {
            cfg.rope_scaling.runtime_divisors(cfg.rope_theta, rot)
        };
        let scale = cfg.rope_scaling.freq_scale();
        let plain = |theta: f32, i: usize| 1.0 / theta.powf((2 * i) as f32 / rot as f32);
        let scaled = |divisors: Option<&[f32]>| -> Vec<f32> {
            (0..half)
                .map(|i| {
                    let f = plain(cfg.rope_theta, i);
                    let f = divisors.map_or(f, |d| f / d[i]);
                    f * scale
                })
                .collect()
        };
        // LongRoPE: the short factors within the original context, the long ones past it.
        let (inv_freq, long_inv_freq) = match &cfg.rope_scaling {
            RopeScaling::LongRope { short, long, original_context, .. } => {
                (scaled(Some(short)), Some((*original_context, scaled(Some(long)))))
            }
            _ => (scaled(divisors.as_deref()), None),
        };
        let swa_inv_freq = cfg.attn.swa_rope_theta.map(|theta| (0..half).map(|i| plain(theta, i)).collect());

        Ok(LlamaModel {
            rope_scale: cfg.rope_scaling.attention_scale(),
            rope_layout: file.qk_layout(),
            embed: mat("token_embd.weight")?,
            norm: vec_("output_norm.weight")?,
            output,
            layers,
            inv_freq,
            long_inv_freq,
            swa_inv_freq,
            config: cfg,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.embed.rows
    }

    /// Run `tokens` at positions `cache.len()..` and return their logits (n × vocab).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_observed(tokens, cache, &mut NoObserver)
    }

    /// [`forward`](Self::forward), reporting the input of every linear layer to `observer`
    /// (importance matrices and calibration statistics are collected this way).
    pub fn forward_observed(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        observer: &mut dyn LinearObserver,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let n = tokens.len();
        if cache.len + n > cache.capacity {
            return Err(Error::InvalidArgument(format!(
                "{} positions exceed the KV cache of {}",
                cache.len + n,
                cache.capacity
            )));
        }
        if cache.len + n > cfg.context_length {
            return Err(Error::InvalidArgument(format!(
                "{} positions exceed the model's context length {}",
                cache.len + n,
                cfg.context_length
            )));
        }
        let mut x = self.embed_tokens(tokens)?;
        let pos0 = cache.len;
        let rope = self.rope_tables(pos0, n);
        for li in 0..self.layers.len() {
            let (k_cache, v_cache) = (&mut cache.k[li], &mut cache.v[li]);
            self.layer_forward(li, &mut x, n, pos0, &rope, (k_cache, v_cache), observer)?;
        }
        cache.len += n;
        let xn = rms_norm(&x, &self.norm, cfg.rms_eps);
        let out = self.output.as_ref().unwrap_or(&self.embed);
        observer.observe(li_output(self.layers.len()), &[&out.name], &xn, n);
        let mut logits = out.matmul(&xn, n);
        if let Some(cap) = cfg.attn.final_softcap {
            logits.par_chunks_mut(4096).for_each(|c| soft_cap(c, cap));
        }
        Ok(logits)
    }

    /// The embeddings of `tokens` (n × hidden): the input of layer 0.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut x = Vec::with_capacity(tokens.len() * self.config.hidden_size);
        for &t in tokens {
            if t as usize >= self.embed.rows {
                return Err(Error::InvalidArgument(format!("token id {t} is outside the vocabulary")));
            }
            x.extend(self.embed.row(t as usize));
        }
        // Gemma scales the embeddings by √hidden (in the activations' dtype: f32 here).
        if self.config.arch.spec().embed_scale {
            let s = (self.config.hidden_size as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(x)
    }

    /// cos/sin of positions `pos0..pos0+n` (rope_dim/2 values per position), shared by q and
    /// k of every layer (of every sliding-window layer, where those rotate on their own).
    pub fn rope_tables(&self, pos0: usize, n: usize) -> RopeTables {
        let table = |inv_freq: &[f32], scale: f32| -> (Vec<f32>, Vec<f32>) {
            (pos0..pos0 + n)
                .flat_map(|p| inv_freq.iter().map(move |&f| p as f32 * f))
                .map(|a| (a.cos() * scale, a.sin() * scale))
                .unzip()
        };
        let inv_freq = match &self.long_inv_freq {
            Some((original, long)) if pos0 + n > *original => long,
            _ => &self.inv_freq,
        };
        let (cos, sin) = table(inv_freq, self.rope_scale);
        RopeTables { cos, sin, swa: self.swa_inv_freq.as_deref().map(|f| table(f, 1.0)) }
    }

    /// Qwen3's per-head RMSNorm of q and k (each head_dim slice normed with the same
    /// weights), in place; nothing for architectures without it.
    fn head_norms(&self, q: &mut [f32], k: &mut [f32], q_norm: Option<&[f32]>, k_norm: Option<&[f32]>) {
        let eps = self.config.rms_eps;
        for (x, w) in [(q, q_norm), (k, k_norm)] {
            if let Some(w) = w {
                let normed = rms_norm(x, w, eps);
                x.copy_from_slice(&normed);
            }
        }
    }

    /// The q/k head-norm weights of layer `li` (Qwen3), for code that runs the attention
    /// block with its own matrices (AWQ).
    pub(crate) fn qk_norms(&self, li: usize) -> (Option<&[f32]>, Option<&[f32]>) {
        self.layers.get(li).map_or((None, None), |l| (l.q_norm.as_deref(), l.k_norm.as_deref()))
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Run decoder layer `li` on the hidden states `x` (n × hidden) of positions
    /// `pos0..pos0+n`, in place. `kv` holds the layer's keys and values of earlier positions
    /// and receives the new ones. Calibration (GPTQ, AWQ) runs the model one layer at a time
    /// through this, with a fresh `kv` per window.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_forward(
        &self,
        li: usize,
        x: &mut [f32],
        n: usize,
        pos0: usize,
        rope: &RopeTables,
        (k_cache, v_cache): (&mut Vec<f32>, &mut Vec<f32>),
        observer: &mut dyn LinearObserver,
    ) -> Result<()> {
        let cfg = &self.config;
        let layer = self.layers.get(li).ok_or_else(|| Error::InvalidArgument(format!("no layer {li}")))?;
        if x.len() != n * cfg.hidden_size || k_cache.len() != pos0 * cfg.kv_dim() {
            return Err(Error::InvalidArgument(format!("layer {li}: activations do not match the model")));
        }
        // Attention block.
        let xn = rms_norm(x, &layer.attn_norm, cfg.rms_eps);
        observer.observe(li, &[&layer.wq.name, &layer.wk.name, &layer.wv.name], &xn, n);
        let w = AttnWeights {
            q: &layer.wq,
            k: &layer.wk,
            v: &layer.wv,
            o: &layer.wo,
            bq: layer.bq.as_deref(),
            bk: layer.bk.as_deref(),
            bv: layer.bv.as_deref(),
            q_norm: layer.q_norm.as_deref(),
            k_norm: layer.k_norm.as_deref(),
        };
        let o = self.attention_with(li, &xn, n, pos0, &w, rope, Some((k_cache, v_cache)), observer);
        self.add_residual(x, o, layer.post_attn_norm.as_deref());

        // Feed-forward block.
        let xn = rms_norm(x, &layer.ffn_norm, cfg.rms_eps);
        let down = self.ffn_with(li, layer, &xn, n, &HashMap::new(), observer);
        self.add_residual(x, down, layer.post_ffn_norm.as_deref());
        Ok(())
    }

    /// x += block output, RMS-normed first where the layer has a post-norm (Gemma).
    fn add_residual(&self, x: &mut [f32], out: Vec<f32>, post_norm: Option<&[f32]>) {
        let out = match post_norm {
            Some(w) => rms_norm(&out, w, self.config.rms_eps),
            None => out,
        };
        add_in_place(x, &out);
    }

    /// up ⊙= act(gate), the architecture's gated activation.
    fn activate(&self, up: &mut [f32], gate: &[f32]) {
        let act = match self.config.arch.spec().activation {
            Activation::Silu => simd::silu_mul,
            Activation::GeluTanh => simd::gelu_tanh_mul,
        };
        up.par_chunks_mut(4096).zip(gate.par_chunks(4096)).for_each(|(u, g)| act(u, g));
    }

    /// The names of layer `li`'s linears, in the order they are computed (see `Layer::linears`).
    pub fn layer_linear_names(&self, li: usize) -> Vec<String> {
        self.layers.get(li).map_or_else(Vec::new, |l| l.linears().iter().map(|m| m.name.clone()).collect())
    }

    /// Drop layer `li`'s linear weights (the calibration driver's finished layers: their
    /// quantized f32 replacements cost 4 bytes a weight). The layer must not run again; the
    /// driver that calls this owns the model and moves on to the next layer.
    pub(crate) fn release_layer(&mut self, li: usize) {
        if let Some(l) = self.layers.get_mut(li) {
            for m in l.linears_mut() {
                *m = Matrix::released(&m.name, m.rows, m.cols);
            }
        }
    }

    /// The weight matrix named `name` (GGUF name), if it is one of the model's linears.
    pub fn weight(&self, name: &str) -> Option<&Matrix<'a>> {
        self.matrices().find(|m| m.name == name)
    }

    /// Replace a linear layer's weights (GPTQ/AWQ put the quantized weights of finished layers
    /// back so that the next layer calibrates on what the quantized model computes).
    pub fn set_weight(&mut self, m: Matrix<'a>) -> Result<()> {
        let slot = self
            .layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .find(|s| s.name == m.name)
            .ok_or_else(|| Error::InvalidArgument(format!("{} is not a linear layer of the model", m.name)))?;
        if (slot.rows, slot.cols) != (m.rows, m.cols) {
            return Err(Error::tensor(&m.name, "replacement has a different shape"));
        }
        *slot = m;
        Ok(())
    }

    /// A norm or bias vector of a decoder layer by GGUF name (`blk.0.attn_norm.weight`,
    /// `blk.0.ffn_norm.weight`, `blk.0.attn_v.bias`, …); `None` for any other name.
    pub fn vector(&self, name: &str) -> Option<&[f32]> {
        let (li, suffix) = name.strip_prefix("blk.")?.split_once('.')?;
        let l = self.layers.get(li.parse::<usize>().ok()?)?;
        match suffix {
            "attn_norm.weight" => Some(&l.attn_norm),
            "ffn_norm.weight" => Some(&l.ffn_norm),
            "attn_q.bias" => l.bq.as_deref(),
            "attn_k.bias" => l.bk.as_deref(),
            "attn_v.bias" => l.bv.as_deref(),
            "ffn_gate_inp_shexp.weight" => match &l.ffn {
                Ffn::Moe(m) => m.shared.as_ref().map(|(_, g)| g.as_slice()),
                Ffn::Dense(_) => None,
            },
            _ => None,
        }
    }

    /// Replace a norm or bias vector (AWQ folds its per-channel scales into the RMSNorm
    /// weights, and into v's bias with v's rows, so that later layers calibrate on what the
    /// quantized model computes).
    pub fn set_vector(&mut self, name: &str, values: Vec<f32>) -> Result<()> {
        let bad = || Error::InvalidArgument(format!("{name} is not a norm or bias vector of the model"));
        let (li, suffix) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')).ok_or_else(bad)?;
        let l = li.parse::<usize>().ok().and_then(|i| self.layers.get_mut(i)).ok_or_else(bad)?;
        let slot = match suffix {
            "attn_norm.weight" => &mut l.attn_norm,
            "ffn_norm.weight" => &mut l.ffn_norm,
            "attn_q.bias" => l.bq.as_mut().ok_or_else(bad)?,
            "attn_k.bias" => l.bk.as_mut().ok_or_else(bad)?,
            "attn_v.bias" => l.bv.as_mut().ok_or_else(bad)?,
            "ffn_gate_inp_shexp.weight" => match &mut l.ffn {
                Ffn::Moe(m) => &mut m.shared.as_mut().ok_or_else(bad)?.1,
                Ffn::Dense(_) => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        if slot.len() != values.len() {
            return Err(Error::tensor(name, "replacement has a different length"));
        }
        *slot = values;
        Ok(())
    }

    /// RMSNorm of the rows of `x` (n × hidden) with the weights `w`.
    pub(crate) fn rms_norm_rows(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        rms_norm(x, w, self.config.rms_eps)
    }

    /// The attention block of a decoder layer from its normed input `xn` (n × hidden, one
    /// window starting at position 0) with the weights `w`: o_proj(attention(q, k, v)), the
    /// residual not added. AWQ's scale search runs this with candidate weights.
    pub(crate) fn attention_block(
        &self,
        li: usize,
        xn: &[f32],
        n: usize,
        w: &AttnWeights<'_, '_>,
        rope: &RopeTables,
    ) -> Result<Vec<f32>> {
        let (cos, sin) = rope.for_layer(&self.config, li);
        let cfg = &self.config;
        let shapes_ok = xn.len() == n * cfg.hidden_size
            && (w.q.rows, w.q.cols) == (cfg.q_dim(), cfg.hidden_size)
            && (w.k.rows, w.k.cols) == (cfg.kv_dim(), cfg.hidden_size)
            && (w.v.rows, w.v.cols) == (cfg.kv_dim(), cfg.hidden_size)
            && (w.o.rows, w.o.cols) == (cfg.hidden_size, cfg.q_dim())
            && cos.len() >= n * cfg.rope_dim / 2
            && sin.len() >= n * cfg.rope_dim / 2;
        if !shapes_ok {
            return Err(Error::InvalidArgument(
                "attention block: weights or activations do not match the model".into(),
            ));
        }
        Ok(self.attention_with(li, xn, n, 0, w, rope, None, &mut NoObserver))
    }

    /// The attention block of layer `li` on its normed input `xn` (positions `pos0..pos0+n`)
    /// with the weights `w`, o_proj applied, the residual not added. With `kv`, the new keys and
    /// values are appended to the cache and attention runs over all of it; without, over this
    /// window alone (pos0 = 0). The one attention computation of the runtime: the forward pass
    /// and AWQ's scale search both run it.
    #[allow(clippy::too_many_arguments)]
    fn attention_with(
        &self,
        li: usize,
        xn: &[f32],
        n: usize,
        pos0: usize,
        w: &AttnWeights<'_, '_>,
        rope: &RopeTables,
        kv: Option<(&mut Vec<f32>, &mut Vec<f32>)>,
        observer: &mut dyn LinearObserver,
    ) -> Vec<f32> {
        let cfg = &self.config;
        // One parallel region for the three products: a generation step's are small, and
        // between separate regions the second thread would go to sleep and be woken again.
        let (mut q, (mut k, mut v)) =
            rayon::join(|| w.q.matmul(xn, n), || rayon::join(|| w.k.matmul(xn, n), || w.v.matmul(xn, n)));
        add_bias(&mut q, w.bq);
        add_bias(&mut k, w.bk);
        add_bias(&mut v, w.bv);
        self.head_norms(&mut q, &mut k, w.q_norm, w.k_norm);
        let (cos, sin) = rope.for_layer(cfg, li);
        self.rope(&mut q, cfg.n_heads, cos, sin);
        self.rope(&mut k, cfg.n_kv_heads, cos, sin);
        let attn = match kv {
            Some((k_cache, v_cache)) => {
                k_cache.extend_from_slice(&k);
                v_cache.extend_from_slice(&v);
                self.attention(li, &q, k_cache, v_cache, n, pos0)
            }
            None => self.attention(li, &q, &k, &v, n, 0),
        };
        observer.observe(li, &[&w.o.name], &attn, n);
        w.o.matmul(&attn, n)
    }

    /// Layer `li`'s feed-forward block (dense, or the mixture of experts with its router and
    /// shared expert) on its normed input `xn` (n × hidden), the residual not added. A linear
    /// named in `subs` is replaced by that matrix: AWQ's scale search runs the block with
    /// candidate weights (the router always runs as the model holds it).
    pub(crate) fn ffn_block(
        &self,
        li: usize,
        xn: &[f32],
        n: usize,
        subs: &HashMap<String, Matrix<'_>>,
    ) -> Result<Vec<f32>> {
        let layer = self.layers.get(li).ok_or_else(|| Error::InvalidArgument(format!("no layer {li}")))?;
        if xn.len() != n * self.config.hidden_size {
            return Err(Error::InvalidArgument("feed-forward block: activations do not match the model".into()));
        }
        Ok(self.ffn_with(li, layer, xn, n, subs, &mut NoObserver))
    }

    /// The feed-forward block of `layer` (index `li`) on its normed input `xn`, the residual
    /// not added, each linear's input shown to `observer`; a linear named in `subs` is replaced
    /// by that matrix. The one feed-forward computation of the runtime (forward pass, AWQ).
    fn ffn_with(
        &self,
        li: usize,
        layer: &Layer<'a>,
        xn: &[f32],
        n: usize,
        subs: &HashMap<String, Matrix<'_>>,
        observer: &mut dyn LinearObserver,
    ) -> Vec<f32> {
        if let Ffn::Moe(moe) = &layer.ffn {
            // The router (and the shared expert's gate) read the block's input too; llama-imatrix
            // collects them, though llama-quantize leaves them in F32.
            observer.observe(li, &[&moe.router.name], xn, n);
            if moe.shared.is_some() {
                observer.observe(li, &[&format!("blk.{li}.ffn_gate_inp_shexp.weight")], xn, n);
            }
        }
        let run = |mat: &Matrix<'_>, x: &[f32], m: usize| match subs.get(&mat.name) {
            Some(s) => s.matmul(x, m),
            None => mat.matmul(x, m),
        };
        // One gated feed-forward (the dense block, an expert) on `m` rows, observed.
        let mut ffn = |w: &ExpertWeights<'a>, x: &[f32], m: usize| {
            observer.observe(li, &[&w.gate.name, &w.up.name], x, m);
            let (gate, mut up) = rayon::join(|| run(&w.gate, x, m), || run(&w.up, x, m));
            self.activate(&mut up, &gate);
            observer.observe(li, &[&w.down.name], &up, m);
            match observer.wants_output() {
                true => run(&w.down, &up, m),
                false => vec![0.0; m * w.down.rows],
            }
        };
        match &layer.ffn {
            Ffn::Dense(w) => ffn(w, xn, n),
            Ffn::Moe(moe) => moe.forward(xn, n, &mut ffn),
        }
    }

    /// An MoE layer's router ([n_experts, hidden]) as f32.
    pub fn router(&self, li: usize) -> Option<Vec<f32>> {
        match &self.layers.get(li)?.ffn {
            Ffn::Moe(m) => Some(m.router.to_f32()),
            Ffn::Dense(_) => None,
        }
    }

    /// Replace a norm, bias, router or linear by GGUF name (what a calibration method hands
    /// back for a finished layer).
    pub fn set_tensor(&mut self, name: &str, values: Vec<f32>) -> Result<()> {
        if self.vector(name).is_some() {
            return self.set_vector(name, values);
        }
        if let Some(li) = names::router_layer(name) {
            let Some(Ffn::Moe(moe)) = self.layers.get_mut(li).map(|l| &mut l.ffn) else {
                return Err(Error::InvalidArgument(format!("{name}: layer {li} has no router")));
            };
            let (rows, cols) = (moe.router.rows, moe.router.cols);
            moe.router = Matrix::from_f32(name, rows, cols, values)?;
            return Ok(());
        }
        let (rows, cols) = {
            let m = self
                .weight(name)
                .ok_or_else(|| Error::InvalidArgument(format!("{name} is not a linear of the model")))?;
            (m.rows, m.cols)
        };
        self.set_weight(Matrix::from_f32(name, rows, cols, values)?)
    }

    /// The linear layers' matrices, layer by layer (q, k, v, o, gate, up, down).
    fn matrices(&self) -> impl Iterator<Item = &Matrix<'a>> {
        self.layers.iter().flat_map(|l| l.linears())
    }

    /// Rotary layout of the q/k rows of this model's weights.
    pub fn rope_layout(&self) -> RopeLayout {
        self.rope_layout
    }

    /// Rotate q or k (n × heads·head_dim) in the layout the weights use; `cos`/`sin` hold
    /// head_dim/2 values per row.
    fn rope(&self, x: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
        let hd = self.config.head_dim;
        // Only the first rope_dim dimensions turn; the rest pass through (partial rotary).
        let half = self.config.rope_dim / 2;
        let layout = self.rope_layout;
        x.par_chunks_mut(heads * hd).enumerate().for_each(|(i, row)| {
            let cos = &cos[i * half..(i + 1) * half];
            let sin = &sin[i * half..(i + 1) * half];
            for head in row.chunks_exact_mut(hd) {
                for j in 0..half {
                    let (a, b) = match layout {
                        RopeLayout::RotateHalf => (j, j + half),
                        RopeLayout::Interleaved => (2 * j, 2 * j + 1),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[j] - x1 * sin[j];
                    head[b] = x1 * cos[j] + x0 * sin[j];
                }
            }
        });
    }

    /// Causal grouped-query attention of layer `li`'s `n` new queries over all cached
    /// positions (over the last `sliding_window` of them in a sliding-window layer).
    fn attention(&self, li: usize, q: &[f32], k_all: &[f32], v_all: &[f32], n: usize, pos0: usize) -> Vec<f32> {
        let cfg = &self.config;
        let (hd, nh) = (cfg.head_dim, cfg.n_heads);
        let (kv_dim, q_dim) = (cfg.kv_dim(), cfg.q_dim());
        let group = nh / cfg.n_kv_heads;
        let scale = cfg.attn.query_scale.unwrap_or(1.0 / (hd as f32).sqrt());
        let window = if cfg.attn.is_swa(li) { cfg.attn.sliding_window } else { None };
        let cap = cfg.attn.attn_softcap;
        // Queries go in blocks so that each block only multiplies against the keys it can see:
        // causal masking then skips ~40% of the work for a full window, and (head, block)
        // tasks keep both cores busy even for models with few heads.
        const QB: usize = 128;
        let blocks = n.div_ceil(QB);
        let parts: Vec<Vec<f32>> = (0..nh * blocks)
            .into_par_iter()
            .map(|task| {
                let (h, b) = (task / blocks, task % blocks);
                let (i0, i1) = (b * QB, ((b + 1) * QB).min(n));
                let rows = i1 - i0;
                let visible = pos0 + i1;
                let kvh = h / group;
                let qh = MatRef::from_row_major_slice_with_stride(&q[i0 * q_dim + h * hd..], rows, hd, q_dim);
                let kh = MatRef::from_row_major_slice_with_stride(&k_all[kvh * hd..], visible, hd, kv_dim);
                let vh = MatRef::from_row_major_slice_with_stride(&v_all[kvh * hd..], visible, hd, kv_dim);
                let mut scores = vec![0f32; rows * visible];
                if rows == 1 {
                    // A generation step: plain loops (a GEMM call costs more than a 1-row product).
                    simd::scores_one(&q[i0 * q_dim + h * hd..][..hd], &k_all[kvh * hd..], kv_dim, scale, &mut scores);
                } else {
                    let sm = MatMut::from_row_major_slice_mut(&mut scores, rows, visible);
                    matmul(sm, Accum::Replace, qh, kh.transpose(), scale, Par::Seq);
                }
                for (r, row) in scores.chunks_exact_mut(visible).enumerate() {
                    let seen = pos0 + i0 + r + 1;
                    // A query sees the keys at distance < window (itself included).
                    let first = window.map_or(0, |w| seen.saturating_sub(w));
                    if let Some(cap) = cap {
                        soft_cap(&mut row[first..seen], cap);
                    }
                    softmax_in_place(&mut row[first..seen]);
                    row[..first].fill(0.0);
                    row[seen..].fill(0.0);
                }
                let mut out = vec![0f32; rows * hd];
                if rows == 1 {
                    simd::weighted_sum_one(&scores, &v_all[kvh * hd..], kv_dim, &mut out);
                } else {
                    let om = MatMut::from_row_major_slice_mut(&mut out, rows, hd);
                    let sm = MatRef::from_row_major_slice(&scores, rows, visible);
                    matmul(om, Accum::Replace, sm, vh, 1.0f32, Par::Seq);
                }
                out
            })
            .collect();
        let mut merged = vec![0f32; n * q_dim];
        for (task, out) in parts.iter().enumerate() {
            let (h, b) = (task / blocks, task % blocks);
            for (r, src) in out.chunks_exact(hd).enumerate() {
                let i = b * QB + r;
                merged[i * q_dim + h * hd..i * q_dim + (h + 1) * hd].copy_from_slice(src);
            }
        }
        merged
    }
}

/// Candidate weights of an attention block (see [`LlamaModel::attention_block`]).
pub(crate) struct AttnWeights<'w, 'a> {
    pub q: &'w Matrix<'a>,
    pub k: &'w Matrix<'a>,
    pub v: &'w Matrix<'a>,
    pub o: &'w Matrix<'a>,
    pub bq: Option<&'w [f32]>,
    pub bk: Option<&'w [f32]>,
    pub bv: Option<&'w [f32]>,
    pub q_norm: Option<&'w [f32]>,
    pub k_norm: Option<&'w [f32]>,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(o, xi)| {
        let ms = xi.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / h as f64;
        let r = 1.0 / ((ms as f32) + eps).sqrt();
        for ((o, &v), &wj) in o.iter_mut().zip(xi).zip(w) {
            *o = wj * (v * r);
        }
    });
    out
}

/// x ← cap·tanh(x/cap) (Gemma's soft-capping of attention scores and logits).
fn soft_cap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            for (v, &bj) in row.iter_mut().zip(b) {
                *v += bj;
            }
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    // Pieces of at least 16k values: a generation step's few thousand are not worth a task.
    x.par_iter_mut().zip(y.par_iter()).with_min_len(1 << 14).for_each(|(a, &b)| *a += b);
}

pub use super::simd::softmax_in_place;

/// Layer index reported for the output projection (one past the last decoder layer).
fn li_output(n_layers: usize) -> usize {
    n_layers
}

/// Sees the input of linear layers during a forward pass.
pub trait LinearObserver {
    /// `x` (n × cols, row-major) is the input of every matrix in `names` (GGUF tensor names:
    /// q/k/v share one input, gate/up share one). `layer` is the decoder layer, or
    /// `n_layers` for the output projection.
    fn observe(&mut self, layer: usize, names: &[&str], x: &[f32], n: usize);

    /// Whether the caller reads the layer's output. An observer that only collects inputs
    /// (GPTQ's statistics pass) answers no, and the feed-forward block's last product, whose
    /// input has then been observed, is skipped: the block adds zeros instead (a quarter of a
    /// LLaMA layer's multiply-adds).
    fn wants_output(&self) -> bool {
        true
    }
}

/// An observer that ignores everything (plain inference).
pub struct NoObserver;

impl LinearObserver for NoObserver {
    fn observe(&mut self, _: usize, _: &[&str], _: &[f32], _: usize) {}
}
