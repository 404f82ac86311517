//! The image error type. Every variant names the image, tarball or path it concerns, so a
//! message shown to an operator says what failed without any surrounding context.

use std::path::PathBuf;

/// Errors building or checking an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A program the build needs is not installed (or not where it was said to be).
    #[error("{tool} not found: {hint}")]
    MissingTool { tool: String, hint: String },

    /// The build needs root (debootstrap chroots and creates files owned by other users).
    #[error("building {image} needs root: {reason}")]
    NeedsRoot { image: PathBuf, reason: String },

    /// The build description is unusable (bad suite, mirror or package name).
    #[error("cannot build {image}: {reason}")]
    InvalidSpec { image: PathBuf, reason: String },

    /// The busybox binary given to `build_tiny` cannot make a working image.
    #[error("busybox {path} cannot be used: {reason}")]
    InvalidBusybox { path: PathBuf, reason: String },

    /// debootstrap exited unsuccessfully. `log_tail` holds its last output lines.
    #[error("debootstrap failed building {image} ({status}):\n{log_tail}")]
    Debootstrap {
        image: PathBuf,
        status: String,
        log_tail: String,
    },

    /// Another tool (tar, busybox) failed while building `image`.
    #[error("{tool} failed building {image} ({status}):\n{output}")]
    ToolFailed {
        tool: String,
        image: PathBuf,
        status: String,
        output: String,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A user-supplied tarball is not a usable root filesystem.
    #[error("{path} is not a usable root filesystem tarball: {reason}")]
    InvalidTarball { path: PathBuf, reason: String },

    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Attaches the path an I/O operation concerned, so `?` keeps the error self-describing.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(path, e))
    }
}
