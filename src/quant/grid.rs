//! A block type's grid, weight by weight: once a block's header (scales, mins) is written,
//! the values each of its weights can take, computed with the decoder's arithmetic, and how a
//! code is stored in the block's bytes. GPTQ rounds onto this (`gptq::ggml_grid`); each block
//! type's module provides its `elem_grid` and `set_code` (rows of `quant::CODECS`).

/// A block type's per-weight grid: `elem(block, j)` is weight `j`'s grid given the header
/// already in `block`; `set_code(block, j, q)` stores its code `q` in the type's layout.
#[derive(Clone, Copy)]
pub struct BlockGrid {
    pub elem: fn(&[u8], usize) -> ElemGrid,
    pub set_code: fn(&mut [u8], usize, i32),
}

/// One weight's representable values, with the dequantizer's arithmetic.
#[derive(Clone, Copy, Debug)]
pub enum ElemGrid {
    /// `((q + off) as f32) · d`, q in qmin..=qmax (Q4_0, Q5_0, Q8_0, Q6_K with d = d·sc).
    Sym { d: f32, off: i32, qmin: i32, qmax: i32 },
    /// `q as f32 · d + m` (Q4_1, Q5_1).
    Affine { d: f32, m: f32, qmax: i32 },
    /// `d · q as f32 − m` (Q4_K, Q5_K with d = d·sc, m = dmin·m).
    KAffine { d: f32, m: f32, qmax: i32 },
    /// `d · levels[q] as f32`, q in 0..=15: a non-uniform grid (IQ4_NL's levels).
    Levels { d: f32, levels: &'static [i8; 16] },
}

impl ElemGrid {
    #[inline(always)]
    pub fn value(self, q: i32) -> f32 {
        match self {
            ElemGrid::Sym { d, off, .. } => (q + off) as f32 * d,
            ElemGrid::Affine { d, m, .. } => q as f32 * d + m,
            ElemGrid::KAffine { d, m, .. } => d * q as f32 - m,
            ElemGrid::Levels { d, levels } => d * levels[q as usize] as f32,
        }
    }

    #[inline(always)]
    pub fn range(self) -> (i32, i32) {
        match self {
            ElemGrid::Sym { qmin, qmax, .. } => (qmin, qmax),
            ElemGrid::Affine { qmax, .. } | ElemGrid::KAffine { qmax, .. } => (0, qmax),
            ElemGrid::Levels { .. } => (0, 15),
        }
    }

    /// The code whose value is nearest to `x` (the lower code on exact ties), and that value.
    #[inline(always)]
    pub fn nearest(self, x: f64) -> (i32, f32) {
        let (qmin, qmax) = self.range();
        let t = match self {
            ElemGrid::Sym { d, off, .. } => x / d as f64 - off as f64,
            ElemGrid::Affine { d, m, .. } => (x - m as f64) / d as f64,
            ElemGrid::KAffine { d, m, .. } => (x + m as f64) / d as f64,
            // Levels not evenly spaced (and d may be negative): try all sixteen.
            ElemGrid::Levels { .. } => return self.nearest_of_all(x),
        };
        // A zero scale (all values equal) or a non-finite one: start anywhere.
        let q0 = if t.is_finite() { (t.round() as i64).clamp(qmin as i64, qmax as i64) as i32 } else { qmin };
        let mut best = (q0, self.value(q0));
        let mut best_err = (x - best.1 as f64).abs();
        for q in [q0 - 1, q0 + 1] {
            if q < qmin || q > qmax {
                continue;
            }
            let v = self.value(q);
            let e = (x - v as f64).abs();
            if e < best_err || (e == best_err && q < best.0) {
                best = (q, v);
                best_err = e;
            }
        }
        best
    }

    /// The nearest of every code's value (the lower code on exact ties).
    fn nearest_of_all(self, x: f64) -> (i32, f32) {
        let (qmin, qmax) = self.range();
        let mut best = (qmin, self.value(qmin));
        let mut best_err = (x - best.1 as f64).abs();
        for q in qmin + 1..=qmax {
            let v = self.value(q);
            let e = (x - v as f64).abs();
            if e < best_err {
                best = (q, v);
                best_err = e;
            }
        }
        best
    }
}

/// Nibble `j` of a 32-weight run packed as Q4_0 does: j < 16 low nibble of byte j, else high
/// nibble of byte j − 16.
#[inline(always)]
pub(crate) fn set_nibble32(qs: &mut [u8], j: usize, v: u8) {
    if j < 16 {
        qs[j] = (qs[j] & 0xF0) | (v & 0x0F);
    } else {
        qs[j - 16] = (qs[j - 16] & 0x0F) | (v << 4);
    }
}

/// Bit `k` of `b` set to `on`.
#[inline(always)]
pub(crate) fn set_bit(b: &mut u8, k: usize, on: bool) {
    *b = (*b & !(1 << k)) | ((on as u8) << k);
}
