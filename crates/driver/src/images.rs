//! The images a driver starts machines from, behind a trait of their own: the platform's
//! image commands (`rnr image …`) need only this, not the machines' lifecycle.

use crate::{ImageInfo, Result};
use async_trait::async_trait;
use std::path::Path;

/// Where a backend keeps the root filesystems machines start from.
///
/// Machines are independent of the image they were started from once running: removing
/// or replacing an image never stops one, nor keeps it from exec'ing.
#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Imports a root filesystem (uncompressed tar of `/`) as image `name`, replacing one
    /// of that name.
    async fn import(&self, name: &str, rootfs_tar: &Path) -> Result<ImageInfo>;

    /// The images machines can be started from, by name.
    async fn list(&self) -> Result<Vec<ImageInfo>>;

    /// Removes image `name`; machines already running from it keep running. Unknown name
    /// -> [`crate::DriverError::ImageNotFound`].
    async fn remove(&self, name: &str) -> Result<()>;
}
