// GPTQ test problems shared by the solver's tests (tests/suite/gptq/solver.rs), the GPU's
// (tests/gptq_cuda.rs) and the crate's CUDA emulation tests (src/quant/gptq/cuda/emulate.rs,
// which `include!`s this file, hence plain comments and no imports; `super::golden` is the
// includer's): seeded weights and activations like a layer's, a Hessian that needs one damping
// retry, and the golden unit layers.

pub struct Rng(u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Weights like a linear layer's: Gaussian, a few outliers.
pub fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    (0..rows * cols)
        .map(|_| {
            let v = 0.02 * r.normal();
            if r.uniform() < 0.002 {
                (v * 8.0) as f32
            } else {
                v as f32
            }
        })
        .collect()
}

/// Activations with strongly correlated neighbouring features (AR(1) along the features,
/// ρ = 0.9) and uneven feature scales, like real layer inputs.
pub fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    let scale: Vec<f64> = (0..cols).map(|_| if r.uniform() < 0.05 { 6.0 } else { 0.5 + r.uniform() }).collect();
    let mut x = vec![0f32; tokens * cols];
    for t in 0..tokens {
        let mut prev = r.normal();
        for c in 0..cols {
            prev = 0.9 * prev + (1.0f64 - 0.81).sqrt() * r.normal();
            x[t * cols + c] = (prev * scale[c]) as f32;
        }
    }
    x
}

/// The dead-column problem: 16 × 256 weights and 600 activation rows whose columns `dead`
/// are all zero (so H[c, c] = 0 there): (rows, cols, tokens, weights, activations, dead).
pub fn dead_column_problem() -> (usize, usize, usize, Vec<f32>, Vec<f32>, [usize; 4]) {
    let (rows, cols, tokens) = (16, 256, 600);
    let w = weights(rows, cols, 21);
    let mut x = activations(tokens, cols, 22);
    let dead = [0usize, 5, 130, 255];
    for t in 0..tokens {
        for &c in &dead {
            x[t * cols + c] = 0.0;
        }
    }
    (rows, cols, tokens, w, x, dead)
}

/// H = v·vᵀ − 0.05·mean(diag)·I (cols × cols, row-major, v = 1 + i mod 5): indefinite, so the
/// default damping 0.01·mean(diag) is not enough and 0.1·mean(diag) (one retry) is.
pub fn indefinite_hessian(cols: usize) -> Vec<f64> {
    let v: Vec<f64> = (0..cols).map(|i| 1.0 + (i % 5) as f64).collect();
    let mut h: Vec<f64> = (0..cols * cols).map(|k| v[k / cols] * v[k % cols]).collect();
    let mean = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[i * cols + i] -= 0.05 * mean;
    }
    h
}

/// One golden layer: name, W, H, Q, rows, cols.
pub type GoldenLayer = (String, Vec<f32>, Vec<f32>, Vec<f32>, usize, usize);

pub fn load_golden(name: &str) -> Vec<GoldenLayer> {
    let bytes = std::fs::read(super::golden(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| {
        let t = st.tensor(k).unwrap_or_else(|e| panic!("{name}: {k}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (v, t.shape().to_vec())
    };
    ["self_attn.q_proj", "self_attn.o_proj"]
        .iter()
        .map(|layer| {
            let (w, ws) = get(&format!("{layer}.W"));
            let (h, hs) = get(&format!("{layer}.H"));
            let (q, qs) = get(&format!("{layer}.Q"));
            assert_eq!(hs, vec![ws[1], ws[1]]);
            assert_eq!(qs, ws);
            (layer.to_string(), w, h, q, ws[0], ws[1])
        })
        .collect()
}
