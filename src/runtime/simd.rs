//! Hot element-wise loops (exp-heavy: softmax, log-sum-exp, SiLU), written as plain loops
//! that LLVM vectorizes and compiled per CPU level by [`crate::cpu::multiversion`].

use crate::cpu::multiversion;

/// e^x for f32, branch-free so that loops over it vectorize. Cody–Waite range reduction and
/// Cephes' minimax polynomial: relative error below 2 ulp over the clamped range; inputs
/// below −87 return ~1e-38 instead of denormals or 0, which no caller can tell apart.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2^23 trick (vectorizes, unlike f32::round).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes' 5.0000001201e-1, which is 0.5 in f32
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    e * scale
}

/// Maximum of a slice with 16 independent lanes (a plain fold is a serial dependency chain
/// that does not vectorize).
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    let m = it.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    lanes.iter().fold(m, |m, &v| m.max(v))
}

/// Σ exp(x − max) in f32 with 16 lanes, storing the exponentials in `out` when given.
#[inline(always)]
fn sum_exp_lanes(x: &mut [f32], max: f32, store: bool) -> f32 {
    let mut lanes = [0f32; 16];
    let mut it = x.chunks_exact_mut(16);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c.iter_mut()) {
            let e = exp_f32(*v - max);
            if store {
                *v = e;
            }
            *l += e;
        }
    }
    let mut s = 0f32;
    for v in it.into_remainder() {
        let e = exp_f32(*v - max);
        if store {
            *v = e;
        }
        s += e;
    }
    s + lanes.iter().sum::<f32>()
}

multiversion! {
    /// Softmax in place.
    pub fn softmax_in_place(x: &mut [f32]) {
        let max = max_lanes(x);
        let sum = sum_exp_lanes(x, max, true);
        let inv = 1.0 / sum;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
}

multiversion! {
    /// log Σ exp(x): f32 exponentials, summed in f32 blocks of 256 and across blocks in f64.
    pub fn log_sum_exp(x: &[f32]) -> f64 {
        let max = max_lanes(x);
        let mut block = [0f32; 256];
        let mut total = 0f64;
        for chunk in x.chunks(256) {
            let b = &mut block[..chunk.len()];
            b.copy_from_slice(chunk);
            total += sum_exp_lanes(b, max, false) as f64;
        }
        max as f64 + total.ln()
    }
}

multiversion! {
    /// KL(P‖Q) from two rows of logits with their log-sum-exps: Σ p_i ((b_i − c_i) − Δ),
    /// Δ = lse_b − lse_c. Differences of nearby f32 logits are exact, products are f32,
    /// sums are f64 per block, so identical rows give exactly 0.
    pub fn kl_from_logits(b: &[f32], c: &[f32], lse_b: f64, lse_c: f64) -> f64 {
        let delta = (lse_b - lse_c) as f32;
        let lse_b32 = lse_b as f32;
        let lse_b_lo = (lse_b - lse_b32 as f64) as f32;
        let mut total = 0f64;
        for (cb, cc) in b.chunks(256).zip(c.chunks(256)) {
            let mut lanes = [0f32; 16];
            let (mut ib, mut ic) = (cb.chunks_exact(16), cc.chunks_exact(16));
            for (xb, xc) in (&mut ib).zip(&mut ic) {
                for ((l, &bi), &ci) in lanes.iter_mut().zip(xb).zip(xc) {
                    *l += exp_f32((bi - lse_b32) - lse_b_lo) * ((bi - ci) - delta);
                }
            }
            let mut s: f32 = lanes.iter().sum();
            for (&bi, &ci) in ib.remainder().iter().zip(ic.remainder()) {
                s += exp_f32((bi - lse_b32) - lse_b_lo) * ((bi - ci) - delta);
            }
            total += s as f64;
        }
        total
    }
}

multiversion! {
    /// up[i] *= silu(gate[i]) — the SwiGLU activation.
    pub fn silu_mul(up: &mut [f32], gate: &[f32]) {
        for (u, &g) in up.iter_mut().zip(gate) {
            *u *= g / (1.0 + exp_f32(-g));
        }
    }
}

multiversion! {
    /// up[i] *= gelu_tanh(gate[i]) — the GeGLU activation (PyTorch's `gelu(approximate="tanh")`:
    /// x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))), with tanh from exp: 1 − 2/(e^{2u} + 1).
    pub fn gelu_tanh_mul(up: &mut [f32], gate: &[f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for (u, &g) in up.iter_mut().zip(gate) {
            let inner = (SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)).clamp(-40.0, 40.0);
            let tanh = 1.0 - 2.0 / (exp_f32(2.0 * inner) + 1.0);
            *u *= 0.5 * g * (1.0 + tanh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_its_formula() {
        let xs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.031).collect();
        let mut out = vec![1f32; xs.len()];
        gelu_tanh_mul(&mut out, &xs);
        for (&x, &o) in xs.iter().zip(&out) {
            let x = x as f64;
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            assert!((o as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "gelu({x}) = {o}, want {want}");
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let e = exp_f32(x) as f64;
            let r = (x as f64).exp();
            worst = worst.max((e - r).abs() / r);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        let x: Vec<f32> = (0..10_000).map(|i| ((i * 7919) % 1000) as f32 * 0.02 - 10.0).collect();
        let max = x.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
        let exact = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&x) - exact).abs() < 1e-6);
    }

    #[test]
    fn kl_of_identical_rows_is_zero_and_matches_f64_otherwise() {
        let b: Vec<f32> = (0..5000).map(|i| ((i * 31) % 97) as f32 * 0.1 - 4.0).collect();
        let lb = log_sum_exp(&b);
        assert_eq!(kl_from_logits(&b, &b, lb, lb), 0.0);
        let c: Vec<f32> = b.iter().enumerate().map(|(i, &v)| v + ((i % 13) as f32 - 6.0) * 0.01).collect();
        let lc = log_sum_exp(&c);
        let exact: f64 = b
            .iter()
            .zip(&c)
            .map(|(&x, &y)| {
                let lpb = x as f64 - lb;
                lpb.exp() * (lpb - (y as f64 - lc))
            })
            .sum();
        let got = kl_from_logits(&b, &c, lb, lc);
        assert!((got - exact).abs() < 1e-6 * exact.max(1e-3), "{got} vs {exact}");
    }
}

/// Σ aᵢ·bᵢ in sixteen lanes, not yet added up (inlined into the CPU-specific copies: as a
/// closure it was compiled for the baseline CPU, with a library call per multiply-add).
#[inline(always)]
fn lanes_dot(a: &[f32], b: &[f32]) -> [f32; 16] {
    let mut lanes = [0f32; 16];
    let (mut ac, mut bc) = (a.chunks_exact(16), b.chunks_exact(16));
    for (a, b) in (&mut ac).zip(&mut bc) {
        for l in 0..16 {
            lanes[l] = a[l].mul_add(b[l], lanes[l]);
        }
    }
    lanes[0] += ac.remainder().iter().zip(bc.remainder()).map(|(a, b)| a * b).sum::<f32>();
    lanes
}

multiversion! {
    /// scores[t] = scale · (q · k_t), k_t the `q.len()` values at `k[t·stride..]`: one query's
    /// scores against the cached keys of its head (a generation step, where a GEMM call for a
    /// 1-row product costs more than the product). Four positions at a time, so that their
    /// lane sums share the reduction's latency.
    pub fn scores_one(q: &[f32], k: &[f32], stride: usize, scale: f32, scores: &mut [f32]) {
        let hd = q.len();
        let done = scores.len() / 4 * 4;
        let mut chunks = scores.chunks_exact_mut(4);
        for (c, s) in (&mut chunks).enumerate() {
            let key = |t: usize| &k[t * stride..t * stride + hd];
            let lanes = [
                lanes_dot(q, key(4 * c)),
                lanes_dot(q, key(4 * c + 1)),
                lanes_dot(q, key(4 * c + 2)),
                lanes_dot(q, key(4 * c + 3)),
            ];
            for (s, l) in s.iter_mut().zip(&lanes) {
                *s = scale * l.iter().sum::<f32>();
            }
        }
        for (i, s) in chunks.into_remainder().iter_mut().enumerate() {
            let t = done + i;
            *s = scale * lanes_dot(q, &k[t * stride..t * stride + hd]).iter().sum::<f32>();
        }
    }
}

multiversion! {
    /// out = Σ_t p[t] · v_t, v_t the `out.len()` values at `v[t·stride..]` (the weighted sum of
    /// one query's values). Two positions per multiply-add into `out`: each position's addition
    /// would wait for the previous one's otherwise.
    pub fn weighted_sum_one(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
        let hd = out.len();
        out.fill(0.0);
        let mut pairs = p.chunks_exact(2);
        for (c, w) in (&mut pairs).enumerate() {
            let (v0, v1) = (&v[2 * c * stride..][..hd], &v[(2 * c + 1) * stride..][..hd]);
            for ((o, &x0), &x1) in out.iter_mut().zip(v0).zip(v1) {
                *o += w[0].mul_add(x0, w[1] * x1);
            }
        }
        if let [w] = pairs.remainder() {
            let t = p.len() - 1;
            for (o, &x) in out.iter_mut().zip(&v[t * stride..][..hd]) {
                *o = w.mul_add(x, *o);
            }
        }
    }
}
