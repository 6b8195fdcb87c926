//! What AWQ keeps of the activations entering a layer's linears during the calibration pass:
//! the mean |x| of every input channel over all tokens (the salience the scales follow), and
//! an evenly strided sample of the token rows themselves (the token-wise searches and the
//! clipping run on it).

use std::collections::HashMap;

/// Statistics of one linear input (q/k/v share one, gate/up share one; an MoE block's
/// router input is the whole block's).
#[derive(Default)]
pub struct InputStats {
    pub cols: usize,
    abs_sum: Vec<f64>,
    tokens: usize,
    /// Sampled rows (sample × cols).
    pub sample: Vec<f32>,
}

impl InputStats {
    /// Mean |x| per input channel.
    pub fn mean_abs(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.abs_sum.iter().map(|&s| (s / n) as f32).collect()
    }

    /// Every token observed (an MoE expert sees those routed to it).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn sample_tokens(&self) -> usize {
        self.sample.len() / self.cols.max(1)
    }
}

/// The inputs of the current layer, keyed by the first linear reading each.
pub struct LayerStats {
    /// Keep token `i` (counted over all windows) when `i % stride == 0`.
    stride: usize,
    pub inputs: HashMap<String, InputStats>,
}

impl LayerStats {
    /// About `sample_tokens` of the `total_tokens` the calibration holds (windows of `seqlen`)
    /// are kept per input. The stride is made coprime with `seqlen` so that the sample walks
    /// through every position of the windows: a stride dividing the window length would pick
    /// position 0 of every window, whose huge "attention sink" activations would then weigh
    /// far more than their share.
    pub fn new(total_tokens: usize, seqlen: usize, sample_tokens: usize) -> LayerStats {
        let mut stride = total_tokens.div_ceil(sample_tokens.max(1)).max(1);
        while stride > 1 && gcd(stride, seqlen) != 1 {
            stride += 1;
        }
        LayerStats { stride, inputs: HashMap::new() }
    }

    pub fn observe(&mut self, key: &str, x: &[f32], n: usize) {
        if n == 0 {
            return;
        }
        let cols = x.len() / n;
        let stride = self.stride;
        let st = self.inputs.entry(key.to_string()).or_insert_with(|| InputStats {
            cols,
            abs_sum: vec![0.0; cols],
            ..Default::default()
        });
        if st.cols != cols {
            // Cannot happen with one model; keep the first shape rather than mixing them.
            return;
        }
        // Counted over every token seen: an expert's calls hold varying numbers of rows.
        let base = st.tokens;
        for (t, row) in x.chunks_exact(cols).enumerate() {
            for (a, &v) in st.abs_sum.iter_mut().zip(row) {
                *a += v.abs() as f64;
            }
            if (base + t).is_multiple_of(stride) {
                st.sample.extend_from_slice(row);
            }
        }
        st.tokens += n;
    }

    pub fn clear(&mut self) {
        self.inputs.clear();
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
