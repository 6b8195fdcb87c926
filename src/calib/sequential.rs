//! Layer-by-layer calibration ("sequential" GPTQ/AWQ): the calibration windows enter layer i
//! through the already-quantized layers before it, so each layer is quantized against the
//! activations the quantized model will actually produce. Only the hidden states of the
//! windows (nsamples × seqlen × hidden) and one layer's statistics are held at a time; the
//! weights stay in the input's memory map until a quantized layer replaces them, a finished
//! layer's replacement weights are dropped once the hidden states have passed through it, and
//! its results go to the work directory (`calib::resume`) until the writer reads them back.

use super::resume::{LayerRecord, WorkDir};
use super::states::States;
use super::Calibration;
use crate::error::{Error, Result};
use crate::model::names;
use crate::runtime::{LinearObserver, LlamaModel, RopeTables};

/// The order in which a layer's linears are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stages {
    /// All seven linears from one pass (what the reference GPTQ does by default).
    OneShot,
    /// q/k/v, then o, then gate/up, then down: each group is calibrated on activations that
    /// went through the quantized groups before it (`--true-sequential`).
    TrueSequential,
}

impl Stages {
    /// GGUF tensor-name prefixes (after `blk.N.`) of each stage: `ffn_gate` takes in an MoE
    /// layer's `ffn_gate_exps.weight[e]` and `ffn_gate_shexp.weight` too.
    fn groups(self) -> Vec<Vec<&'static str>> {
        const ALL: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
        match self {
            Stages::OneShot => vec![ALL.to_vec()],
            Stages::TrueSequential => vec![
                vec!["attn_q", "attn_k", "attn_v"],
                vec!["attn_output"],
                vec!["ffn_gate", "ffn_up"],
                vec!["ffn_down"],
            ],
        }
    }
}

/// Whether the linear `suffix` (`attn_q.weight`, `ffn_up_exps.weight[3]`) belongs to the stage
/// entry `group` (`attn_q`, `ffn_up`).
fn in_group(suffix: &str, group: &str) -> bool {
    suffix.strip_prefix(group).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_'))
}

/// A quantization method driven by calibration activations.
pub trait LayerQuantizer {
    /// The input `x` (n × cols) of the linears `names` during a calibration pass (only the
    /// linears of the stage being quantized are reported).
    fn observe(&mut self, layer: usize, names: &[&str], x: &[f32], n: usize) -> Result<()>;

    /// Whether the method also wants each linear's input in the *unquantized* model (the
    /// windows run through the original layers alongside): asymmetric calibration fits the
    /// quantized layer on the quantized model's inputs to the original layer's output on the
    /// original model's inputs. Only with [`Stages::OneShot`] and dense layers.
    fn wants_reference_inputs(&self) -> bool {
        false
    }

    /// [`LayerQuantizer::observe`] with `x_ref`, the same rows' input in the unquantized
    /// model (called instead of `observe` when [`LayerQuantizer::wants_reference_inputs`]).
    fn observe_with_reference(
        &mut self,
        layer: usize,
        names: &[&str],
        x: &[f32],
        _x_ref: &[f32],
        n: usize,
    ) -> Result<()> {
        self.observe(layer, names, x, n)
    }

    /// The input of an MoE layer's router `router` (the whole expert block's normed input,
    /// every token) during a pass of a stage that holds the block's experts. A method that
    /// scales the block's input as one (AWQ) needs it; the default ignores it.
    fn observe_block(&mut self, _layer: usize, _router: &str, _x: &[f32], _n: usize) -> Result<()> {
        Ok(())
    }

    /// Quantize `names` (GGUF names, all observed over every window). `inputs` are the layer's
    /// input hidden states per window (AWQ re-runs parts of the layer on them). Returns the
    /// quantized-then-dequantized weights (rows × cols, in the model's row layout) that replace
    /// the originals for the rest of the calibration, and any norm or bias vector of the layer
    /// the method changed (AWQ folds its scales into them; see `LlamaModel::set_vector`).
    fn quantize(
        &mut self,
        model: &LlamaModel<'_>,
        layer: usize,
        names: &[String],
        inputs: &States,
    ) -> Result<Vec<(String, Vec<f32>)>>;

    /// Record what the method kept of layer `layer` (results for the writer, report lines)
    /// into `rec` (see `calib::resume`).
    fn save_layer(&self, layer: usize, rec: &mut LayerRecord) -> Result<()>;

    /// Take back what [`LayerQuantizer::save_layer`] recorded (layers come in order).
    fn load_layer(&mut self, layer: usize, rec: &LayerRecord) -> Result<()>;

    /// Drop layer `layer`'s results from memory: they are saved, and the writer reads them
    /// back from the work directory. The report lines stay.
    fn release_layer(&mut self, layer: usize);
}

/// Passes only the observations of the current stage, and keeps the first error.
struct StageFilter<'q> {
    names: &'q [String],
    inner: &'q mut dyn LayerQuantizer,
    error: Option<Error>,
    /// The unquantized model's input of each observed linear group (by its first name), for
    /// [`LayerQuantizer::observe_with_reference`].
    reference: Option<&'q InputCapture>,
}

/// Records the input of every linear group of a layer pass (the unquantized model's, for
/// asymmetric calibration).
#[derive(Default)]
struct InputCapture {
    inputs: std::collections::HashMap<String, (Vec<f32>, usize)>,
}

impl LinearObserver for InputCapture {
    fn observe(&mut self, _layer: usize, names: &[&str], x: &[f32], n: usize) {
        self.inputs.insert(names[0].to_string(), (x.to_vec(), n));
    }
}

impl LinearObserver for StageFilter<'_> {
    /// The statistics pass's output is dropped (the next layer's inputs come from the
    /// quantized layer).
    fn wants_output(&self) -> bool {
        false
    }

    fn observe(&mut self, layer: usize, names: &[&str], x: &[f32], n: usize) {
        if self.error.is_some() {
            return;
        }
        let router = matches!(names, [r] if names::router_layer(r) == Some(layer));
        let experts_in_stage = || self.names.iter().any(|s| names::split_expert_part(s).is_some());
        if router && !experts_in_stage() || !router && !names.iter().any(|m| self.names.iter().any(|s| s == m)) {
            return;
        }
        if x.iter().any(|v| !v.is_finite()) {
            self.error = Some(Error::InvalidModel(format!(
                "layer {layer}: the calibration activations entering {} hold NaN or Inf",
                names.join("/")
            )));
            return;
        }
        let r = match self.reference {
            _ if router => self.inner.observe_block(layer, names[0], x, n),
            None => self.inner.observe(layer, names, x, n),
            Some(cap) => match cap.inputs.get(names[0]) {
                // The same tokens in both models: a dense linear.
                Some((x_ref, n_ref)) if *n_ref == n => self.inner.observe_with_reference(layer, names, x, x_ref, n),
                _ => Err(Error::Unsupported(format!(
                    "layer {layer}: {} does not see the same calibration tokens in the quantized and \
                     the unquantized model (routed experts); asymmetric calibration needs dense layers",
                    names[0]
                ))),
            },
        };
        if let Err(e) = r {
            self.error = Some(e);
        }
    }
}

/// Quantize every decoder layer of `model` in order with `q`, replacing its weights as it
/// goes. `on_layer(i)` is called after layer i is done (progress). Each finished layer is
/// saved to `work` and leaves memory (the method's results and the model's replaced weights:
/// the model is consumed, since its finished layers can no longer run); in a resumable `work`,
/// the layers already saved are loaded instead of quantized again (see `calib::resume`).
/// Returns how many layers were loaded.
pub fn run(
    mut model: LlamaModel<'_>,
    calib: &Calibration,
    stages: Stages,
    q: &mut dyn LayerQuantizer,
    work: &WorkDir,
    on_layer: &mut dyn FnMut(usize),
) -> Result<usize> {
    let n = calib.seqlen;
    let rope = model.rope_tables(0, n);
    let len = n * model.config.hidden_size;
    let asymmetric = q.wants_reference_inputs();
    if asymmetric && stages != Stages::OneShot {
        return Err(Error::Unsupported(
            "asymmetric calibration runs all of a layer's linears from one pass (no --true-sequential)".into(),
        ));
    }
    let saved = match work.resumable() {
        true => work.resume_point(model.n_layers(), calib.windows.len(), len, asymmetric)?,
        false => None,
    };
    let (resumed, mut states, saved_reference) = match saved {
        Some((done, states, reference)) => (done, states, reference),
        None => {
            let mut states = work.new_states(calib.windows.len(), len)?;
            for (i, w) in calib.windows.iter().enumerate() {
                let x = model.embed_tokens(w)?;
                if x.len() != len {
                    return Err(Error::InvalidModel(format!(
                        "a calibration window embeds to {} values, not {n} × {}",
                        x.len(),
                        model.config.hidden_size
                    )));
                }
                states[i].copy_from_slice(&x);
            }
            (0, states, None)
        }
    };
    // The windows' hidden states in the unquantized model (asymmetric calibration only):
    // saved with the states when resumed, else the embeddings both models share.
    let mut reference = match saved_reference {
        Some(r) => Some(r),
        None if asymmetric => {
            let mut r = work.new_states(states.len(), len)?;
            for i in 0..states.len() {
                r[i].copy_from_slice(&states[i]);
            }
            Some(r)
        }
        None => None,
    };
    for li in 0..model.n_layers() {
        if li < resumed {
            q.load_layer(li, &work.load(li)?)?;
            q.release_layer(li);
            model.release_layer(li);
            on_layer(li);
            continue;
        }
        quantize_layer(&mut model, li, n, &rope, &states, reference.as_mut(), stages, q)?;
        let mut rec = LayerRecord::default();
        q.save_layer(li, &mut rec)?;
        work.save(li, &rec)?;
        q.release_layer(li);
        // The next layer's inputs: this layer's outputs with its quantized weights.
        for i in 0..states.len() {
            let (mut k, mut v) = (Vec::new(), Vec::new());
            model.layer_forward(li, &mut states[i], n, 0, &rope, (&mut k, &mut v), &mut crate::runtime::NoObserver)?;
        }
        model.release_layer(li);
        if work.resumable() && li + 1 < model.n_layers() {
            work.save_states(li, &states, reference.as_ref())?;
        }
        on_layer(li);
    }
    Ok(resumed)
}

/// Observe and quantize the stages of layer `li`, putting the results into the model. With
/// `reference` (the unquantized model's hidden states; one stage), each window first runs
/// through the unquantized layer, which records its linears' inputs for the quantizer and
/// advances the reference state to the next layer's input.
#[allow(clippy::too_many_arguments)]
fn quantize_layer(
    model: &mut LlamaModel<'_>,
    li: usize,
    n: usize,
    rope: &RopeTables,
    states: &States,
    mut reference: Option<&mut States>,
    stages: Stages,
    q: &mut dyn LayerQuantizer,
) -> Result<()> {
    for group in stages.groups() {
        let prefix = format!("blk.{li}.");
        let names: Vec<String> = model
            .layer_linear_names(li)
            .into_iter()
            .filter(|n| n.strip_prefix(&prefix).is_some_and(|s| group.iter().any(|g| in_group(s, g))))
            .collect();
        for (i, x) in states.iter().enumerate() {
            let mut capture = InputCapture::default();
            if let Some(r) = reference.as_deref_mut() {
                let (mut k, mut v) = (Vec::new(), Vec::new());
                model.layer_forward(li, &mut r[i], n, 0, rope, (&mut k, &mut v), &mut capture)?;
            }
            let mut filter = StageFilter {
                names: &names,
                inner: &mut *q,
                error: None,
                reference: reference.is_some().then_some(&capture),
            };
            let mut x = x.to_vec();
            let (mut k, mut v) = (Vec::new(), Vec::new());
            model.layer_forward(li, &mut x, n, 0, rope, (&mut k, &mut v), &mut filter)?;
            if let Some(e) = filter.error.take() {
                return Err(e);
            }
        }
        for (name, values) in q.quantize(model, li, &names, states)? {
            model.set_tensor(&name, values)?;
        }
    }
    Ok(())
}
