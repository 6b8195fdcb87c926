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
use crate::quant::grid::BlockGrid;

pub(crate) struct GgmlGrid {
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
    /// The type's per-weight grid and code layout.
    grid: BlockGrid,
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
        let (quantize_block, grid) = match crate::quant::codec(ty) {
            Some(&crate::quant::Codec { encode, gptq: Some(grid), .. }) => (encode, grid),
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
            qk,
            block_bytes: ty.block_bytes(),
            cols,
            row_bytes: cols / qk * ty.block_bytes(),
            static_blocks,
            perm: perm.to_vec(),
            triggers,
            quantize_block,
            grid,
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
        let (q, v) = (self.grid.elem)(blk, j).nearest(w);
        (self.grid.set_code)(blk, j, q);
        (v as f64, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::decode_slice;
    use crate::quant::grid::ElemGrid;
    use crate::quant::iq4_nl::KVALUES;

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
        for t in super::super::ggml_types() {
            let g = GgmlGrid::new(t, false, &(0..t.block_size()).collect::<Vec<_>>(), t.block_size(), None).unwrap();
            let x: Vec<f32> = (0..g.qk).map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1).collect();
            let mut b = vec![0u8; g.block_bytes];
            (g.quantize_block)(&x, &mut b);
            let mut want = vec![0f32; g.qk];
            for round in 0..300 {
                for (j, wj) in want.iter_mut().enumerate() {
                    let eg = (g.grid.elem)(&b, j);
                    let (qmin, qmax) = eg.range();
                    // Each weight goes through its whole range over the rounds, then random codes.
                    let span = (qmax - qmin + 1) as u64;
                    let q = qmin
                        + if round < span as usize { (round as u64 + j as u64) % span } else { next() % span } as i32;
                    (g.grid.set_code)(&mut b, j, q);
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
        let g = ElemGrid::Levels { d: -0.25, levels: &KVALUES };
        assert_eq!(g.nearest(2.4), (7, 2.5)); // k = −10
        assert_eq!(g.nearest(-31.0), (15, -28.25)); // k = 113, the end of the range
        assert_eq!(g.nearest(0.0), (8, -0.25)); // k = 1
        let g = ElemGrid::Levels { d: 0.0, levels: &KVALUES };
        assert_eq!(g.nearest(5.0), (0, 0.0));
    }
}
