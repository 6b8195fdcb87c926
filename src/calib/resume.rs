//! Resuming an interrupted calibrated run (`quantize --resume`): a GPTQ or AWQ run over a big
//! model takes hours, and starting again from layer 0 after a crash, a kill or a full disk is
//! what users of GPTQModel and AutoAWQ complain about most.
//!
//! The sequential driver saves every finished layer as one safetensors file
//! (`layer-00007.safetensors`, written to a temporary name, synced and renamed, so a file under
//! its final name is always complete) holding what the method keeps for the writer (codes,
//! scales, GGML blocks, folded vectors) and its report lines, through
//! [`LayerQuantizer::save_layer`](super::sequential::LayerQuantizer). In a resumable directory
//! it also keeps the calibration hidden states after the last finished layer
//! (`states.safetensors`, replaced atomically after each layer): they are all a later layer
//! needs of the earlier ones.
//!
//! A restarted run takes the finished layers' records (results, reports) and the saved states
//! and goes on with the next layer. Nothing else carries state from one layer to the next, so
//! the final checkpoint is byte-identical to an uninterrupted run's. Disk use stays at the
//! records (about a byte and a half per quantized weight) plus one set of states. `job.json`
//! records the settings, inputs and calibration the layers were made with; a work directory
//! from another job is refused rather than mixed in.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use super::states::States;
use crate::error::{Error, Result};
use crate::formats::st_writer::{StEntry, StWriter};
use crate::output::{AtomicDir, AtomicFile};

/// One finished layer: the method's share (see the module doc), or the saved states.
#[derive(Default)]
pub struct LayerRecord {
    tensors: Vec<(String, Dtype, Vec<u8>)>,
    /// The method's small state (result descriptions, report lines), as JSON.
    pub meta: Map<String, Value>,
}

impl LayerRecord {
    pub fn put_u8(&mut self, key: String, v: &[u8]) {
        self.tensors.push((key, Dtype::U8, v.to_vec()));
    }

    pub fn put_f32(&mut self, key: String, v: &[f32]) {
        self.tensors.push((key, Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }

    pub fn put_u32(&mut self, key: String, v: &[u32]) {
        self.tensors.push((key, Dtype::U32, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }

    fn get(&self, key: &str, dtype: Dtype) -> Result<&[u8]> {
        self.tensors
            .iter()
            .find(|(k, d, _)| k == key && *d == dtype)
            .map(|(_, _, b)| b.as_slice())
            .ok_or_else(|| Error::InvalidModel(format!("resume record: {key} ({dtype:?}) is missing")))
    }

    pub fn u8(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.get(key, Dtype::U8)?.to_vec())
    }

    pub fn f32(&self, key: &str) -> Result<Vec<f32>> {
        Ok(self.get(key, Dtype::F32)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    pub fn u32(&self, key: &str) -> Result<Vec<u32>> {
        Ok(self.get(key, Dtype::U32)?.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|(k, d, b)| {
                let n = b.len() * 8 / d.bitsize();
                safetensors::tensor::TensorView::new(*d, vec![n], b).map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidModel(format!("resume record: {e}")))?;
        let header = HashMap::from([("qforge_layer".to_string(), Value::Object(self.meta.clone()).to_string())]);
        safetensors::tensor::serialize(views, Some(header))
            .map_err(|e| Error::InvalidModel(format!("resume record: {e}")))
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<LayerRecord> {
        let bad = |why: String| Error::malformed(path, "resume record", why);
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let meta_text = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("qforge_layer"))
            .ok_or_else(|| bad("no qforge_layer metadata".into()))?;
        let meta: Map<String, Value> = serde_json::from_str(meta_text).map_err(|e| bad(e.to_string()))?;
        let tensors = st.tensors().into_iter().map(|(name, view)| (name, view.dtype(), view.data().to_vec())).collect();
        Ok(LayerRecord { tensors, meta })
    }
}

/// Where a calibrated run keeps its finished layers: `<output>.qforge-resume` for a resumable
/// run (`--resume`), kept until the output is complete; otherwise a scratch directory beside the
/// output, removed when the run ends however it ends (see [`AtomicDir`]). Either way each
/// finished layer's results leave memory for the directory, so a run holds about one layer's
/// results however big the model is; the writer reads them back layer by layer.
pub struct WorkDir {
    dir: PathBuf,
    /// The scratch directory's guard (`None`: a resumable directory).
    scratch: Option<AtomicDir>,
    /// Where the calibration states live (`--offload-activations`; `None`: in memory).
    offload: Option<PathBuf>,
}

impl WorkDir {
    /// The work directory of `output`: created with `job` (the run's settings, inputs and
    /// calibration) recorded, or, if it exists, checked to be this job's.
    pub fn open(output: &Path, job: &Value) -> Result<WorkDir> {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push(".qforge-resume");
        let dir = output.with_file_name(name);
        let job_path = dir.join("job.json");
        match std::fs::read_to_string(&job_path) {
            Ok(text) => {
                let recorded: Value =
                    serde_json::from_str(&text).map_err(|e| Error::malformed(&job_path, "JSON", e.to_string()))?;
                if &recorded != job {
                    return Err(Error::InvalidArgument(format!(
                        "{} holds the finished layers of a run with other settings, inputs or calibration; \
                         delete it to start again, or run without --resume",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                write_atomic(&job_path, serde_json::to_string_pretty(job).unwrap_or_default().as_bytes())?;
            }
            Err(e) => return Err(Error::io(&job_path, e)),
        }
        Ok(WorkDir { dir, scratch: None, offload: None })
    }

    /// A scratch directory for a run that is not resumable: hidden, beside `output` (in the
    /// system's temporary directory when the output is standard output), removed on drop and
    /// on SIGINT/SIGTERM.
    pub fn scratch(output: &Path) -> Result<WorkDir> {
        let dest = if output.as_os_str() == "-" {
            std::env::temp_dir().join("qforge-work")
        } else {
            let mut name = output.file_name().unwrap_or_default().to_os_string();
            name.push(".qforge-work");
            output.with_file_name(name)
        };
        let guard = AtomicDir::create(&dest)?;
        Ok(WorkDir { dir: guard.path().to_path_buf(), scratch: Some(guard), offload: None })
    }

    /// Whether a later run can resume from this directory (then the records also hold the
    /// model updates that recompute the hidden states).
    pub fn resumable(&self) -> bool {
        self.scratch.is_none()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Keep the calibration states in a file in `dir` (see [`States::in_file`]).
    pub fn offload_states_to(mut self, dir: Option<PathBuf>) -> WorkDir {
        self.offload = dir;
        self
    }

    /// Zeroed calibration states, where this run keeps them.
    pub fn new_states(&self, count: usize, len: usize) -> Result<States> {
        match &self.offload {
            Some(dir) => States::in_file(dir, count, len),
            None => States::in_memory(count, len),
        }
    }

    fn layer_path(&self, layer: usize) -> PathBuf {
        self.dir.join(format!("layer-{layer:05}.safetensors"))
    }

    /// How many layers, from the first, are finished.
    pub fn completed(&self, n_layers: usize) -> usize {
        (0..n_layers).take_while(|&l| self.layer_path(l).is_file()).count()
    }

    pub fn load(&self, layer: usize) -> Result<LayerRecord> {
        read_record(&self.layer_path(layer))
    }

    fn states_path(&self) -> PathBuf {
        self.dir.join("states.safetensors")
    }

    /// Keep the calibration hidden states after layer `layer` (one tensor per window), and
    /// with `reference` the same windows' states in the unquantized model (asymmetric
    /// calibration), replacing the earlier layer's: streamed from `states` (no copy of them is
    /// made) through the streaming safetensors writer into an atomic file (temporary name,
    /// sync, rename).
    pub fn save_states(&self, layer: usize, states: &States, reference: Option<&States>) -> Result<()> {
        let path = self.states_path();
        let sets: Vec<(&str, &States)> =
            std::iter::once(("window", states)).chain(reference.map(|r| ("reference", r))).collect();
        let entries = sets
            .iter()
            .flat_map(|(prefix, s)| {
                (0..s.len()).map(move |i| StEntry {
                    name: format!("{prefix}.{i}"),
                    dtype: Dtype::F32,
                    shape: vec![s.window_len()],
                })
            })
            .collect();
        let meta = Value::Object(Map::from_iter([("after_layer".to_string(), Value::from(layer))])).to_string();
        let mut st = StWriter::new(AtomicFile::create(&path)?, &path, entries, &[("qforge_layer", meta.as_str())])?;
        for (prefix, s) in sets {
            for (i, x) in s.iter().enumerate() {
                // Little-endian f32s, as safetensors stores them (the targets qforge builds for).
                st.write(&format!("{prefix}.{i}"), bytemuck::cast_slice(x))?;
            }
        }
        let (file, _) = st.finish()?;
        file.commit(|_| Ok(()))
    }

    /// Where a restarted run goes on: the number of finished layers whose results and
    /// following states are saved, and those states (`windows` of `len` values, placed as
    /// [`WorkDir::new_states`] places them), with the unquantized model's when
    /// `with_reference`; `None` to start from the first layer. A run killed between a layer's
    /// record and its states redoes that layer.
    pub fn resume_point(
        &self,
        n_layers: usize,
        windows: usize,
        len: usize,
        with_reference: bool,
    ) -> Result<Option<(usize, States, Option<States>)>> {
        let done = self.completed(n_layers);
        let path = self.states_path();
        if done == 0 || !path.is_file() {
            return Ok(None);
        }
        let bad = |why: String| Error::malformed(&path, "saved calibration states", why);
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: read-only map of our own work file, which no other process writes.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (_, header) = SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
        let after = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("qforge_layer"))
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .and_then(|m| m.get("after_layer").and_then(Value::as_u64))
            .map(|l| l as usize);
        let Some(after) = after.filter(|&l| l < done) else { return Ok(None) };
        let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        let read = |prefix: &str| -> Result<States> {
            let mut states = self.new_states(windows, len)?;
            for i in 0..windows {
                let view = st.tensor(&format!("{prefix}.{i}")).map_err(|e| bad(e.to_string()))?;
                if view.dtype() != Dtype::F32 || view.data().len() != len * 4 {
                    return Err(Error::InvalidModel("the saved calibration states do not match the model".into()));
                }
                for (v, b) in states[i].iter_mut().zip(view.data().chunks_exact(4)) {
                    *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Ok(states)
        };
        let reference = if with_reference { Some(read("reference")?) } else { None };
        Ok(Some((after + 1, read("window")?, reference)))
    }

    pub fn save(&self, layer: usize, rec: &LayerRecord) -> Result<()> {
        write_atomic(&self.layer_path(layer), &rec.to_bytes()?)
    }

    /// Remove the directory once the output is complete.
    pub fn remove(self) -> Result<()> {
        match self.scratch {
            Some(guard) => drop(guard),
            None => std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?,
        }
        Ok(())
    }
}

fn read_record(path: &Path) -> Result<LayerRecord> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    LayerRecord::from_bytes(&bytes, path)
}

/// Write `bytes` to a temporary name beside `path`, sync, and rename (an [`AtomicFile`]): a
/// file under its final name is always complete, whenever the process dies.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.commit(|_| Ok(()))
}
