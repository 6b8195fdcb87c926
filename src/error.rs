//! The library's error type. Every failure that can come from a file, the user or the
//! operating system is one of these variants; the CLI adds context with `anyhow`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file whose bytes do not follow its format (truncated, bad offsets, bad header...).
    #[error("{path}: malformed {format} file: {msg}")]
    Malformed { path: PathBuf, format: &'static str, msg: String },

    /// A well-formed file that uses something qforge does not handle.
    #[error("{0}")]
    Unsupported(String),

    /// A model whose pieces do not fit together (missing tensor, wrong shape, bad config).
    #[error("{0}")]
    InvalidModel(String),

    /// Bad arguments from the user.
    #[error("{0}")]
    InvalidArgument(String),

    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("interrupted")]
    Interrupted,

    /// The GPU backend (feature `cuda`) failed: a driver, NVRTC, cuBLAS or cuSOLVER error, or
    /// no usable device. Always present so that the enum does not depend on the features.
    #[error("CUDA: {0}")]
    Cuda(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn malformed(path: impl Into<PathBuf>, format: &'static str, msg: impl Into<String>) -> Self {
        Error::Malformed { path: path.into(), format, msg: msg.into() }
    }

    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
}
