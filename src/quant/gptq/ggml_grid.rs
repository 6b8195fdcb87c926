//! GGML block types as GPTQ grids. A block (32 weights; 256 for the K-quants) runs along a
//! row. When the sweep first reaches one of its columns, qforge's reference quantizer for the
//! type encodes the block's current values, which fixes the block header: `d`, `m`, the
//! K-quant sub-block scales and mins. From then on each weight of the block, when the sweep
//! reaches it, is rounded to the nearest value its sub-block can represent with that header,
//! and its code is written into the block's bytes. Values are computed exactly as the
//! dequantizers compute them, so the bytes decode to the sweep's result bit for bit.

use super::solver::ColumnGrid;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::quant::float::get_f16;
use crate::quant::iq4_nl;
use crate::quant::kquants::get_scale_min_k4;

/// One weight's representable values, with the dequantizer's arithmetic.
#[derive(Clone, Copy, Debug)]
enum ElemGrid {
    /// `((q + off) as f32) · d`, q in qmin..=qmax (Q4_0, Q5_0, Q8_0, Q6_K with d = d·sc).
    Sym { d: f32, off: i32, qmin: i32, qmax: i32 },
    /// `q as f32 · d + m` (Q4_1, Q5_1).
    Affine { d: f32, m: f32, qmax: i32 },
    /// `d · q as f32 − m` (Q4_K, Q5_K with d = d·sc, m = dmin·m).
    KAffine { d: f32, m: f32, qmax: i32 },
    /// `d · KVALUES[q] as f32`, q in 0..=15: IQ4_NL's non-uniform levels.
    Iq4Nl { d: f32 },
}

impl ElemGrid {
    #[inline(always)]
    fn value(self, q: i32) -> f32 {
        match self {
            ElemGrid::Sym { d, off, .. } => (q + off) as f32 * d,
            ElemGrid::Affine { d, m, .. } => q as f32 * d + m,
            ElemGrid::KAffine { d, m, .. } => d * q as f32 - m,
            ElemGrid::Iq4Nl { d } => d * iq4_nl::KVALUES[q as usize] as f32,
        }
    }

    #[inline(always)]
    fn range(self) -> (i32, i32) {
        match self {
            ElemGrid::Sym { qmin, qmax, .. } => (qmin, qmax),
            ElemGrid::Affine { qmax, .. } | ElemGrid::KAffine { qmax, .. } => (0, qmax),
            ElemGrid::Iq4Nl { .. } => (0, 15),
        }
    }

    /// The code whose value is nearest to `x` (the lower code on exact ties), and that value.
    #[inline(always)]
    fn nearest(self, x: f64) -> (i32, f32) {
        let (qmin, qmax) = self.range();
        let t = match self {
            ElemGrid::Sym { d, off, .. } => x / d as f64 - off as f64,
            ElemGrid::Affine { d, m, .. } => (x - m as f64) / d as f64,
            ElemGrid::KAffine { d, m, .. } => (x + m as f64) / d as f64,
            // Levels not evenly spaced (and d may be negative): try all sixteen.
            ElemGrid::Iq4Nl { .. } => return self.nearest_of_all(x),
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

pub(crate) struct GgmlGrid {
    ty: GgmlType,
    /// Weights per block.
    qk: usize,
    block_bytes: usize,
    cols: usize,
    row_bytes: usize,
    static_blocks: bool,
    perm: Vec<usize>,
    /// For each sweep position: the block's positions, in block order, if the block's header
    /// is fixed there (empty otherwise).
    triggers: Vec<Vec<usize>>,
    quantize_block: fn(&[f32], &mut [u8]),
    /// Per-column importance for the weighted header quantizer (`None`: the plain one).
    importance: Option<(Vec<f32>, crate::quant::weighted::RowFn)>,
}

pub(crate) struct GgmlState {
    bytes: Vec<u8>,
}

impl GgmlGrid {
    pub(crate) fn new(
        ty: GgmlType,
        static_blocks: bool,
        perm: &[usize],
        cols: usize,
        importance: Option<Vec<f32>>,
    ) -> Result<Self> {
        // Q8_0 has no weighted quantizer (llama.cpp ignores an imatrix for it).
        let importance = importance.and_then(|w| crate::quant::weighted::row_fn(ty).map(|f| (w, f)));
        if importance.as_ref().is_some_and(|(w, _)| w.len() != cols) {
            return Err(Error::InvalidArgument(format!("importance for {} columns, not {cols}", cols)));
        }
        // The block header comes from llama.cpp's quantizer of the type (the codec table's).
        let quantize_block = match crate::quant::codec(ty) {
            Some(c) if super::GGML_TYPES.contains(&ty) => c.encode,
            _ => return Err(Error::Unsupported(format!("GPTQ with a {ty} grid is not supported"))),
        };
        let qk = ty.block_size();
        let mut triggers = vec![Vec::new(); cols];
        if !static_blocks {
            let mut inv = vec![0; cols];
            for (p, &c) in perm.iter().enumerate() {
                inv[c] = p;
            }
            for b in 0..cols / qk {
                let pos: Vec<usize> = (b * qk..(b + 1) * qk).map(|c| inv[c]).collect();
                let first = *pos.iter().min().unwrap();
                triggers[first] = pos;
            }
        }
        Ok(GgmlGrid {
            ty,
            qk,
            block_bytes: ty.block_bytes(),
            cols,
            row_bytes: cols / qk * ty.block_bytes(),
            static_blocks,
            perm: perm.to_vec(),
            triggers,
            quantize_block,
            importance,
        })
    }

    /// Fix the header of the block starting at column `c0` from its values `x`.
    fn encode_header(&self, x: &[f32], c0: usize, blk: &mut [u8]) {
        match &self.importance {
            Some((w, row)) => row(x, &w[c0..c0 + self.qk], blk),
            None => (self.quantize_block)(x, blk),
        }
    }

    /// Concatenate the chunks' encoded rows.
    pub(crate) fn finish(&self, states: Vec<GgmlState>) -> Vec<u8> {
        let mut out = Vec::with_capacity(states.iter().map(|s| s.bytes.len()).sum());
        for s in states {
            out.extend_from_slice(&s.bytes);
        }
        out
    }

    /// The grid of weight `j` in block `b` (its header already written).
    #[inline(always)]
    fn elem_grid(&self, b: &[u8], j: usize) -> ElemGrid {
        match self.ty {
            GgmlType::Q4_0 => ElemGrid::Sym { d: get_f16(b), off: -8, qmin: 0, qmax: 15 },
            GgmlType::Q5_0 => ElemGrid::Sym { d: get_f16(b), off: -16, qmin: 0, qmax: 31 },
            GgmlType::IQ4_NL => ElemGrid::Iq4Nl { d: get_f16(b) },
            // ggml's quantizer never writes −128, and its SIMD dot products assume it does not.
            GgmlType::Q8_0 => ElemGrid::Sym { d: get_f16(b), off: 0, qmin: -127, qmax: 127 },
            GgmlType::Q4_1 => ElemGrid::Affine { d: get_f16(b), m: get_f16(&b[2..]), qmax: 15 },
            GgmlType::Q5_1 => ElemGrid::Affine { d: get_f16(b), m: get_f16(&b[2..]), qmax: 31 },
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let (sc, m) = get_scale_min_k4(j / 32, &b[4..16]);
                let qmax = if self.ty == GgmlType::Q4_K { 15 } else { 31 };
                ElemGrid::KAffine { d: get_f16(b) * sc as f32, m: get_f16(&b[2..]) * m as f32, qmax }
            }
            GgmlType::Q6_K => {
                let sc = b[192 + j / 16] as i8;
                ElemGrid::Sym { d: get_f16(&b[208..]) * sc as f32, off: -32, qmin: 0, qmax: 63 }
            }
            _ => unreachable!("checked in GgmlGrid::new"),
        }
    }

    /// Store code `q` of weight `j` in block `b`, in the type's layout.
    #[inline(always)]
    fn set_code(&self, b: &mut [u8], j: usize, q: i32) {
        // Nibble `j` of a 32-weight run packed as Q4_0 does: j < 16 low nibble of byte j,
        // else high nibble of byte j − 16.
        fn nibble32(qs: &mut [u8], j: usize, v: u8) {
            if j < 16 {
                qs[j] = (qs[j] & 0xF0) | (v & 0x0F);
            } else {
                qs[j - 16] = (qs[j - 16] & 0x0F) | (v << 4);
            }
        }
        fn bit(b: &mut u8, k: usize, on: bool) {
            *b = (*b & !(1 << k)) | ((on as u8) << k);
        }
        match self.ty {
            GgmlType::Q4_0 | GgmlType::IQ4_NL => nibble32(&mut b[2..18], j, q as u8),
            GgmlType::Q4_1 => nibble32(&mut b[4..20], j, q as u8),
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let (qh, qs) = if self.ty == GgmlType::Q5_0 { (2, 6) } else { (4, 8) };
                nibble32(&mut b[qs..qs + 16], j, (q & 0xF) as u8);
                bit(&mut b[qh + j / 8], j % 8, q & 0x10 != 0);
            }
            GgmlType::Q8_0 => b[2 + j] = q as i8 as u8,
            GgmlType::Q4_K => {
                // 64-weight chunk c fills 32 bytes: weight i low nibble, i + 32 high nibble.
                let (c, i) = (j / 64, j % 64);
                let k = 16 + 32 * c + i % 32;
                b[k] = if i < 32 { (b[k] & 0xF0) | q as u8 } else { (b[k] & 0x0F) | ((q as u8) << 4) };
            }
            GgmlType::Q5_K => {
                let (c, i) = (j / 64, j % 64);
                let k = 48 + 32 * c + i % 32;
                let lo = (q & 0xF) as u8;
                b[k] = if i < 32 { (b[k] & 0xF0) | lo } else { (b[k] & 0x0F) | (lo << 4) };
                bit(&mut b[16 + i % 32], 2 * c + i / 32, q & 0x10 != 0);
            }
            GgmlType::Q6_K => {
                // Half h: ql[64h..], qh[128 + 32h..]. Quarter t of the half (32 weights):
                // low nibbles in ql[i + 32·(t&1)] (low for t < 2, high otherwise), top two bits
                // in qh[i] bits 2t, 2t+1.
                let (h, t, i) = (j / 128, (j % 128) / 32, j % 32);
                let lo = (q & 0xF) as u8;
                let k = 64 * h + i + 32 * (t & 1);
                b[k] = if t < 2 { (b[k] & 0xF0) | lo } else { (b[k] & 0x0F) | (lo << 4) };
                let kh = 128 + 32 * h + i;
                b[kh] = (b[kh] & !(3 << (2 * t))) | ((((q >> 4) & 3) as u8) << (2 * t));
            }
            _ => unreachable!("checked in GgmlGrid::new"),
        }
    }

    #[inline(always)]
    fn block_mut<'s>(&self, st: &'s mut GgmlState, r: usize, c: usize) -> &'s mut [u8] {
        let o = r * self.row_bytes + c / self.qk * self.block_bytes;
        &mut st.bytes[o..o + self.block_bytes]
    }
}

impl ColumnGrid for GgmlGrid {
    type State = GgmlState;

    fn new_state(&self, w: &[f32], rows: usize, dead: &[bool]) -> GgmlState {
        let mut st = GgmlState { bytes: vec![0; rows * self.row_bytes] };
        if self.static_blocks {
            let mut x = vec![0f32; self.qk];
            for (r, row) in w.chunks_exact(self.cols).enumerate() {
                for b in 0..self.cols / self.qk {
                    for (j, v) in x.iter_mut().enumerate() {
                        let c = b * self.qk + j;
                        *v = if dead[c] { 0.0 } else { row[c] };
                    }
                    let blk = self.block_mut(&mut st, r, b * self.qk);
                    self.encode_header(&x, b * self.qk, blk);
                }
            }
        }
        st
    }

    fn trigger(&self, p: usize) -> &[usize] {
        &self.triggers[p]
    }

    fn set_params(&self, st: &mut GgmlState, r: usize, p: usize, vals: &[f64]) {
        let x: Vec<f32> = vals.iter().map(|&v| v as f32).collect();
        let c0 = self.perm[p] / self.qk * self.qk;
        let blk = self.block_mut(st, r, self.perm[p]);
        self.encode_header(&x, c0, blk);
    }

    #[inline(always)]
    fn quantize(&self, st: &mut GgmlState, r: usize, p: usize, w: f64) -> (f64, f32) {
        let c = self.perm[p];
        let j = c % self.qk;
        let blk = self.block_mut(st, r, c);
        let (q, v) = self.elem_grid(blk, j).nearest(w);
        self.set_code(blk, j, q);
        (v as f64, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::decode_slice;

    /// Every code of every weight, written with `set_code` into a header made by the type's
    /// quantizer, decodes to `elem_grid(..).value(code)` exactly (and leaves the other weights
    /// alone).
    #[test]
    fn codes_and_values_match_the_decoder() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for &t in super::super::GGML_TYPES {
            let g = GgmlGrid::new(t, false, &(0..t.block_size()).collect::<Vec<_>>(), t.block_size(), None).unwrap();
            let x: Vec<f32> = (0..g.qk).map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1).collect();
            let mut b = vec![0u8; g.block_bytes];
            (g.quantize_block)(&x, &mut b);
            let mut want = vec![0f32; g.qk];
            for round in 0..300 {
                for (j, wj) in want.iter_mut().enumerate() {
                    let eg = g.elem_grid(&b, j);
                    let (qmin, qmax) = eg.range();
                    // Each weight goes through its whole range over the rounds, then random codes.
                    let span = (qmax - qmin + 1) as u64;
                    let q = qmin
                        + if round < span as usize { (round as u64 + j as u64) % span } else { next() % span } as i32;
                    g.set_code(&mut b, j, q);
                    *wj = eg.value(q);
                }
                let mut got = vec![0f32; g.qk];
                decode_slice(t, &b, &mut got).unwrap();
                for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{t} round {round} weight {j}");
                }
            }
        }
    }

    #[test]
    fn nearest_picks_the_closest_level() {
        let g = ElemGrid::Sym { d: -0.5, off: -8, qmin: 0, qmax: 15 };
        assert_eq!(g.nearest(1.1), (6, 1.0));
        assert_eq!(g.nearest(100.0), (0, 4.0));
        assert_eq!(g.nearest(-100.0), (15, -3.5));
        let g = ElemGrid::KAffine { d: 0.25, m: 1.0, qmax: 15 };
        assert_eq!(g.nearest(-0.3), (3, -0.25));
        // Halfway: the lower code.
        assert_eq!(g.nearest(-0.375).0, 2);
        let g = ElemGrid::Affine { d: 0.0, m: 0.5, qmax: 15 };
        assert_eq!(g.nearest(3.0).1, 0.5);
        // IQ4_NL's levels k = −127, −104, …, −10, 1, 13, …, 113 times d, here negative (as its
        // quantizer may make it), so the values run from 31.75 down to −28.25.
        let g = ElemGrid::Iq4Nl { d: -0.25 };
        assert_eq!(g.nearest(2.4), (7, 2.5)); // k = −10
        assert_eq!(g.nearest(-31.0), (15, -28.25)); // k = 113, the end of the range
        assert_eq!(g.nearest(0.0), (8, -0.25)); // k = 1
        let g = ElemGrid::Iq4Nl { d: 0.0 };
        assert_eq!(g.nearest(5.0), (0, 0.0));
    }
}
