//! Streaming GGUF v3 writer. Every tensor's type and shape is declared up front, so the whole
//! header (with all offsets) is known before the first data byte; tensor bytes are then
//! streamed one tensor at a time and never held together in memory. The sink can be a file
//! or a pipe.

use std::io::Write;

use super::reader::align_up;
use super::value::{Array, Value};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    pub size: u64,
    pub offset: u64,
}

#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PlannedTensor>,
    data_len: u64,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a metadata key, replacing an earlier value of the same key (keys keep the order in
    /// which they were first set).
    /// `general.alignment` is ignored: the writer always aligns to 32 bytes, the default every
    /// reader assumes, so a value copied from another file cannot contradict the layout.
    pub fn set(&mut self, key: &str, value: Value) {
        if key == "general.alignment" {
            return;
        }
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// Declare the next tensor. `shape` is row-major, outermost first ([out, in] for a weight);
    /// it is stored reversed, as GGML's `ne`.
    pub fn add_tensor(&mut self, name: &str, shape: &[usize], ggml_type: GgmlType) -> Result<()> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::InvalidModel(format!("tensor {name} declared twice")));
        }
        if shape.is_empty() || shape.len() > 4 {
            return Err(Error::tensor(name, format!("GGUF stores 1 to 4 dimensions, not {}", shape.len())));
        }
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let size = ggml_type.tensor_bytes(&ne).map_err(|e| Error::tensor(name, e.to_string()))?;
        let offset = self.data_len;
        self.data_len =
            align_up(offset + size, DEFAULT_ALIGNMENT).ok_or_else(|| Error::tensor(name, "file size overflows"))?;
        self.tensors.push(PlannedTensor { name: name.to_string(), ne, ggml_type, size, offset });
        Ok(())
    }

    /// The header, padded to the alignment so that data starts right after it.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut h, k);
            h.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut h, v);
        }
        for t in &self.tensors {
            put_string(&mut h, &t.name);
            h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            h.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = align_up(h.len() as u64, DEFAULT_ALIGNMENT).unwrap_or(h.len() as u64) as usize;
        h.resize(padded, 0);
        h
    }

    /// Total file size, known before any data is written.
    pub fn total_size(&self) -> u64 {
        self.header_bytes().len() as u64 + self.data_len
    }

    /// Write the header and return a stream that accepts the tensors in declaration order.
    pub fn start<W: Write>(self, mut sink: W) -> Result<GgufStream<W>> {
        let header = self.header_bytes();
        sink.write_all(&header).map_err(|e| Error::io("<output>", e))?;
        Ok(GgufStream { sink, tensors: self.tensors, next: 0 })
    }
}

pub struct GgufStream<W: Write> {
    sink: W,
    tensors: Vec<PlannedTensor>,
    next: usize,
}

impl<W: Write> GgufStream<W> {
    /// The tensor the stream expects next, if any.
    pub fn next_tensor(&self) -> Option<&PlannedTensor> {
        self.tensors.get(self.next)
    }

    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let t = self.tensors.get(self.next).ok_or_else(|| Error::tensor(name, "written but never declared"))?;
        if t.name != name {
            return Err(Error::tensor(name, format!("written out of order (expected {})", t.name)));
        }
        if data.len() as u64 != t.size {
            return Err(Error::tensor(
                name,
                format!("{} bytes given, {} declared for {} {:?}", data.len(), t.size, t.ggml_type, t.ne),
            ));
        }
        let pad = align_up(t.size, DEFAULT_ALIGNMENT).unwrap_or(t.size) - t.size;
        self.sink.write_all(data).map_err(|e| Error::io("<output>", e))?;
        self.sink.write_all(&vec![0u8; pad as usize]).map_err(|e| Error::io("<output>", e))?;
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(Error::tensor(&t.name, "declared but never written"));
        }
        self.sink.flush().map_err(|e| Error::io("<output>", e))?;
        Ok(self.sink)
    }
}

fn put_string(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.push(*x as u8),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(*x as u8),
        Value::String(s) => put_string(h, s),
        Value::Array(a) => put_array(h, a),
    }
}

fn put_array(h: &mut Vec<u8>, a: &Array) {
    h.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    h.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => h.extend_from_slice(v),
        Array::String(v) => v.iter().for_each(|s| put_string(h, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(h, a)),
        other => other.iter().for_each(|item| put_value(h, &item)),
    }
}
