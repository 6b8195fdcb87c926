//! A method's results read back from the work directory (`calib::resume`) for the writer, one
//! layer at a time: the sequential driver moves every finished layer's results to disk, so the
//! run holds about one layer's codes whatever the model's size (a 70B model's 4-bit codes alone
//! are 70 GB at a byte each). A layer's record is read when the writer first asks for one of
//! its tensors, its joined weights are put together there (`fuse_results`), and each result
//! leaves memory again when the writer takes it.

use std::collections::HashMap;

use super::{fuse_results, RowParts};
use crate::calib::resume::{LayerRecord, WorkDir};
use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// Reads a method's results out of a layer record (`gptq_results`, `awq_results`).
pub type ReadResults<T> = fn(&LayerRecord) -> Result<Vec<(String, T)>>;

pub struct SpilledResults<'w, T> {
    map: HashMap<String, T>,
    work: &'w WorkDir,
    /// Reads the method's results out of a layer record.
    read: ReadResults<T>,
    loaded: Vec<bool>,
    cfg: &'w ModelConfig,
    /// Join an MoE layer's experts too (GGUF output; see `fuse_results`).
    experts: bool,
}

/// The decoder layer a GGUF tensor name belongs to (`blk.N.…`).
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

impl<'w, T: RowParts> SpilledResults<'w, T> {
    /// The results still in memory (`in_memory`) and those of every layer saved in `work`.
    pub fn new(
        mut in_memory: HashMap<String, T>,
        work: &'w WorkDir,
        read: ReadResults<T>,
        cfg: &'w ModelConfig,
        experts: bool,
    ) -> Result<SpilledResults<'w, T>> {
        fuse_results(&mut in_memory, cfg, experts)?;
        Ok(SpilledResults { map: in_memory, work, read, loaded: vec![false; cfg.n_layers], cfg, experts })
    }

    fn load(&mut self, layer: usize) -> Result<()> {
        if self.loaded.get(layer) != Some(&false) {
            return Ok(());
        }
        let rec = self.work.load(layer)?;
        self.map.extend((self.read)(&rec)?);
        fuse_results(&mut self.map, self.cfg, self.experts)?;
        self.loaded[layer] = true;
        Ok(())
    }

    /// The result for `name` (GGUF name), which leaves the set; `None` if the method did not
    /// quantize it.
    pub fn take(&mut self, name: &str) -> Result<Option<T>> {
        if let Some(layer) = layer_of(name) {
            self.load(layer)?;
        }
        Ok(self.map.remove(name))
    }

    /// Every result of layer `layer`, which leave the set.
    pub fn take_layer(&mut self, layer: usize) -> Result<HashMap<String, T>> {
        self.load(layer)?;
        let names: Vec<String> = self.map.keys().filter(|n| layer_of(n) == Some(layer)).cloned().collect();
        Ok(names.into_iter().filter_map(|n| self.map.remove_entry(&n)).collect())
    }

    /// Check that the writer took every result (a result left over was quantized but not
    /// written: a bug to report, not a file to ship).
    pub fn finish(&mut self) -> Result<()> {
        for layer in 0..self.loaded.len() {
            self.load(layer)?;
        }
        match self.map.keys().min() {
            Some(name) => Err(Error::tensor(name, "was quantized but not written")),
            None => Ok(()),
        }
    }
}
