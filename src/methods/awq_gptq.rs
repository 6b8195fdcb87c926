//! AWQ then GPTQ (llm-compressor's recipe): per layer, AWQ's activation-aware scales are
//! searched and folded into the norms (and v / up rows, router and shared gate) exactly as
//! `--method awq` does, then GPTQ rounds the folded weights instead of round-to-nearest.
//! AWQ's clipping is skipped: GPTQ's error feedback chooses the ranges itself.
//!
//! Both methods observe the same calibration pass (one stage per layer, the layer's original
//! weights). The Hessians are of the unscaled inputs `x`; a folded linear sees `x / s` with its
//! columns multiplied by `s`, so GPTQ solves against `S⁻¹ H S⁻¹` (see
//! [`Linear::input_scales`]) — the Hessian of the inputs the folded weights really get. With
//! asymmetric calibration (GPTQ's default) the drift between the unquantized and the quantized
//! model's inputs is scaled the same way.

use super::awq::AwqMethod;
use super::gptq::{GptqMethod, Linear};
use crate::calib::resume::LayerRecord;
use crate::calib::sequential::LayerQuantizer;
use crate::calib::states::States;
use crate::error::Result;
use crate::runtime::LlamaModel;

pub struct AwqGptqMethod {
    pub awq: AwqMethod,
    pub gptq: GptqMethod,
}

// Deliberately the same method signatures as the AWQ and GPTQ impls: the trait's
// (calib::sequential::LayerQuantizer), each body delegating to the two methods.
impl LayerQuantizer for AwqGptqMethod {
    fn observe(&mut self, layer: usize, names: &[&str], x: &[f32], n: usize) -> Result<()> {
        self.awq.observe(layer, names, x, n)?;
        self.gptq.observe(layer, names, x, n)
    }

    fn wants_reference_inputs(&self) -> bool {
        self.gptq.wants_reference_inputs()
    }

    /// AWQ searches its scales on the quantized model's inputs; GPTQ's asymmetric calibration
    /// also takes the unquantized model's (their drift is scaled by AWQ's scales as the
    /// Hessian is: see `quantize_linears`).
    fn observe_with_reference(
        &mut self,
        layer: usize,
        names: &[&str],
        x: &[f32],
        x_ref: &[f32],
        n: usize,
    ) -> Result<()> {
        self.awq.observe(layer, names, x, n)?;
        self.gptq.observe_with_reference(layer, names, x, x_ref, n)
    }

    fn observe_block(&mut self, layer: usize, router: &str, x: &[f32], n: usize) -> Result<()> {
        self.awq.observe_block(layer, router, x, n)
    }

    fn quantize(
        &mut self,
        model: &LlamaModel<'_>,
        layer: usize,
        names: &[String],
        inputs: &States,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let (l, _, scales) = self.awq.fold_stage(model, layer, names, inputs, false)?;
        let linears = l.linears().into_iter().zip(scales).map(|((name, rows, cols, w), s)| {
            Ok(Linear { name, rows, cols, w: w.clone(), input_scales: s.iter().any(|&v| v != 1.0).then_some(s) })
        });
        let mut out = self.gptq.quantize_linears(layer, linears)?;
        out.extend(l.vectors());
        Ok(out)
    }

    fn save_layer(&self, layer: usize, rec: &mut LayerRecord) -> Result<()> {
        self.awq.save_layer(layer, rec)?;
        self.gptq.save_layer(layer, rec)
    }

    fn load_layer(&mut self, layer: usize, rec: &LayerRecord) -> Result<()> {
        self.awq.load_layer(layer, rec)?;
        self.gptq.load_layer(layer, rec)
    }

    fn release_layer(&mut self, layer: usize) {
        self.awq.release_layer(layer);
        self.gptq.release_layer(layer);
    }
}
