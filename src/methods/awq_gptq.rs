//! AWQ then GPTQ (llm-compressor's recipe): per layer, AWQ's activation-aware scales are
//! searched and folded into the norms (and v / up rows, router and shared gate) exactly as
//! `--method awq` does, then GPTQ rounds the folded weights instead of round-to-nearest.
//! AWQ's clipping is skipped: GPTQ's error feedback chooses the ranges itself.
//!
//! Both methods observe the same calibration pass (one stage per layer, the layer's original
//! weights). The Hessians are of the unscaled inputs `x`; a folded linear sees `x / s` with its
//! columns multiplied by `s`, so GPTQ solves against `S⁻¹ H S⁻¹` (see
//! [`Linear::input_scales`]) — the Hessian of the inputs the folded weights really get.

use super::awq::AwqMethod;
use super::gptq::{GptqMethod, Linear};
use crate::calib::sequential::LayerQuantizer;
use crate::error::{Error, Result};
use crate::runtime::LlamaModel;

pub struct AwqGptqMethod {
    pub awq: AwqMethod,
    pub gptq: GptqMethod,
}

impl LayerQuantizer for AwqGptqMethod {
    fn observe(&mut self, layer: usize, names: &[&str], x: &[f32], n: usize) -> Result<()> {
        self.awq.observe(layer, names, x, n)?;
        self.gptq.observe(layer, names, x, n)
    }

    fn observe_block(&mut self, layer: usize, router: &str, x: &[f32], n: usize) -> Result<()> {
        self.awq.observe_block(layer, router, x, n)
    }

    fn quantize(
        &mut self,
        model: &LlamaModel<'_>,
        layer: usize,
        names: &[String],
        inputs: &[Vec<f32>],
    ) -> Result<Vec<(String, Vec<f32>)>> {
        if names != model.layer_linear_names(layer).as_slice() || inputs.is_empty() {
            return Err(Error::InvalidArgument("AWQ+GPTQ quantizes all linears of a layer in one stage".into()));
        }
        let folded = self.awq.fold_layer(model, layer, inputs, false);
        self.awq.clear_stats();
        let (l, _, scales) = folded?;
        let linears = l
            .linears()
            .into_iter()
            .zip(scales)
            .map(|((name, rows, cols, w), s)| Linear {
                name,
                rows,
                cols,
                w: w.clone(),
                input_scales: s.iter().any(|&v| v != 1.0).then_some(s),
            })
            .collect();
        let mut out = self.gptq.quantize_linears(layer, linears)?;
        out.extend(l.vectors());
        Ok(out)
    }
}
