//! The Docker driver's [`ImageStore`]: images are imported root filesystems tagged
//! `rnr/<name>:latest` on the engine.
//!
//! Removing one removes its tag, forcibly: the engine then deletes the image unless a
//! container still uses it, in which case it keeps it, untagged, for as long as such a
//! container exists (the machines started from it keep running and can exec). Re-importing
//! a name leaves the image it replaces untagged the same way. Each import and removal
//! then prunes the untagged images this driver imported (they carry [`IMAGE_LABEL`]) that
//! no container uses any more: the engine keeps unused untagged images forever otherwise.

use crate::{image_ref, map_err, IMAGE_REPO_PREFIX};
use async_trait::async_trait;
use bollard::image::{
    CreateImageOptions, ListImagesOptions, PruneImagesOptions, RemoveImageOptions,
};
use bollard::Docker;
use futures::StreamExt;
use rnr_driver::{DriverError, ImageInfo, ImageStore, Result};
use std::collections::HashMap;
use std::path::Path;

/// Label of every image this driver imports (its name), so that pruning touches no other.
pub(crate) const IMAGE_LABEL: &str = "io.rootnroll.image";

/// The images of one engine (shared by every platform instance using it).
#[derive(Clone)]
pub(crate) struct DockerImages {
    docker: Docker,
}

impl DockerImages {
    pub(crate) fn new(docker: Docker) -> Self {
        Self { docker }
    }

    /// Deletes the untagged images this driver imported that no container uses (best
    /// effort: what is left now goes at the next import or removal).
    async fn prune(&self) {
        let filters = HashMap::from([
            // Only untagged ones: without it the engine prunes every unused image.
            ("dangling", vec!["true"]),
            ("label", vec![IMAGE_LABEL]),
        ]);
        if let Err(e) = self
            .docker
            .prune_images(Some(PruneImagesOptions { filters }))
            .await
        {
            tracing::warn!(error = %e, "cannot prune replaced and removed images");
        }
    }
}

#[async_trait]
impl ImageStore for DockerImages {
    async fn import(&self, name: &str, rootfs_tar: &Path) -> Result<ImageInfo> {
        let body = tokio::fs::read(rootfs_tar)
            .await
            .map_err(|e| DriverError::io(rootfs_tar.display().to_string(), e))?;
        let repo = format!("{IMAGE_REPO_PREFIX}{name}");
        let label = format!("LABEL {IMAGE_LABEL}={name}");
        let mut progress = self.docker.create_image(
            Some(CreateImageOptions {
                from_src: "-",
                repo: repo.as_str(),
                tag: "latest",
                changes: vec![label.as_str()],
                ..Default::default()
            }),
            Some(body.into()),
            None,
        );
        while let Some(msg) = progress.next().await {
            let msg = msg.map_err(|e| DriverError::backend(name, format!("image import: {e}")))?;
            if let Some(err) = msg.error {
                return Err(DriverError::backend(name, format!("image import: {err}")));
            }
        }
        let img = self
            .docker
            .inspect_image(&image_ref(name))
            .await
            .map_err(|_| DriverError::ImageNotFound(name.to_string()))?;
        self.prune().await;
        Ok(ImageInfo {
            name: name.to_string(),
            size_bytes: img.size.and_then(|s| u64::try_from(s).ok()),
        })
    }

    async fn list(&self) -> Result<Vec<ImageInfo>> {
        let filters = HashMap::from([(
            "reference".to_string(),
            vec![format!("{IMAGE_REPO_PREFIX}*")],
        )]);
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                all: false,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(|e| map_err("-", e))?;
        let mut out: Vec<ImageInfo> = images
            .into_iter()
            .flat_map(|img| {
                let size = u64::try_from(img.size).ok();
                img.repo_tags.into_iter().filter_map(move |tag| {
                    let name = tag
                        .strip_prefix(IMAGE_REPO_PREFIX)?
                        .strip_suffix(":latest")?;
                    Some(ImageInfo {
                        name: name.to_string(),
                        size_bytes: size,
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        // Without force the engine refuses to untag an image a container (even a stopped
        // one) was created from; with it, it untags it and keeps what those containers use.
        let options = RemoveImageOptions {
            force: true,
            noprune: false,
        };
        match self
            .docker
            .remove_image(&image_ref(name), Some(options), None)
            .await
        {
            Ok(_) => {
                self.prune().await;
                Ok(())
            }
            // 400: not even a valid reference, so no image of ours.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 400,
                ..
            }) => Err(DriverError::ImageNotFound(name.to_string())),
            Err(e) => Err(map_err(name, e)),
        }
    }
}
