//! `rnr image …`: build images (Debian with debootstrap, the tiny busybox image), import
//! tarballs, list and remove what the driver has. Builds show progress on the terminal and
//! one line per stage in logs.

use crate::config::Config;
use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use rnr_driver::{Driver, DriverError};
use rnr_images::{DebianSpec, Progress};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an image and import it into the driver.
    Build {
        /// `debian` (bookworm with debootstrap) or `tiny` (busybox, no network, seconds).
        kind: String,
        /// Name to import it as (default: the kind).
        #[arg(long)]
        name: Option<String>,
        /// Debian mirror for debootstrap.
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        mirror: String,
        /// Extra Debian packages to include.
        #[arg(long = "package", value_name = "PKG")]
        packages: Vec<String>,
        /// Do nothing if the driver already has an image of that name.
        #[arg(long)]
        if_missing: bool,
    },
    /// Import a root filesystem tarball (uncompressed tar of `/`) as an image.
    Import { name: String, file: PathBuf },
    /// List the images the driver can start machines from.
    List,
    /// Remove an image; machines started from it keep running.
    #[command(visible_alias = "remove")]
    Rm { name: String },
}

/// Shows progress as a bar on a terminal and as a line per stage everywhere.
struct BarProgress {
    bar: ProgressBar,
    started: Instant,
}

impl BarProgress {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:>10} [{bar:30}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Self {
            bar,
            started: Instant::now(),
        }
    }
}

impl Progress for BarProgress {
    fn stage(&self, name: &str, total: Option<u64>) {
        self.bar.set_prefix(name.to_string());
        self.bar.set_position(0);
        self.bar.set_length(total.unwrap_or(0));
        let line = format!(
            "[{:>5.1}s] {name}{}",
            self.started.elapsed().as_secs_f64(),
            total.map(|t| format!(" ({t})")).unwrap_or_default()
        );
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}

/// The configured driver, for its images.
async fn image_driver(cfg: &Config) -> anyhow::Result<Arc<dyn Driver>> {
    let store = crate::serve::open_store(cfg).await?;
    crate::serve::connect_image_driver(cfg, &store).await
}

async fn import(cfg: &Config, name: &str, tar: &Path) -> anyhow::Result<()> {
    let driver = image_driver(cfg).await?;
    eprintln!(
        "importing {} as image {name} into the {} driver…",
        tar.display(),
        driver.name()
    );
    let started = Instant::now();
    let info = driver
        .images()
        .import(name, tar)
        .await
        .with_context(|| format!("cannot import image {name}"))?;
    eprintln!(
        "image {name} ready ({} MB) in {:.1}s",
        info.size_bytes.unwrap_or(0) / 1_000_000,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn run(cfg: &Config, cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build {
            kind,
            name,
            mirror,
            packages,
            if_missing,
        } => {
            let name = name.unwrap_or_else(|| kind.clone());
            rnr_images::validate_name(&name)?;
            if if_missing {
                let driver = image_driver(cfg).await?;
                if driver.images().list().await?.iter().any(|i| i.name == name) {
                    eprintln!("image {name} already present; nothing to build");
                    return Ok(());
                }
            }
            let work_dir = cfg.data_dir.join("images");
            std::fs::create_dir_all(&work_dir)
                .with_context(|| format!("cannot create {}", work_dir.display()))?;
            let out = work_dir.join(format!("{name}.tar"));
            let started = Instant::now();
            eprintln!("building image {name} ({kind}) into {}", out.display());
            let (w, o) = (work_dir.clone(), out.clone());
            let built = match kind.as_str() {
                "tiny" => {
                    tokio::task::spawn_blocking(move || {
                        let busybox =
                            which("busybox").unwrap_or_else(|| PathBuf::from("/bin/busybox"));
                        rnr_images::build_tiny(&busybox, &w, &o, &BarProgress::new())
                    })
                    .await?
                }
                "debian" => {
                    let mut spec = DebianSpec {
                        mirror,
                        ..DebianSpec::default()
                    };
                    spec.packages.extend(packages);
                    tokio::task::spawn_blocking(move || {
                        rnr_images::build_debian(&spec, &w, &o, &BarProgress::new())
                    })
                    .await?
                }
                other => anyhow::bail!("unknown image kind {other:?}: use `debian` or `tiny`"),
            };
            built.with_context(|| format!("cannot build image {name}"))?;
            eprintln!(
                "built {} in {:.1}s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            import(cfg, &name, &out).await
        }
        ImageCommand::Import { name, file } => {
            rnr_images::validate_name(&name)?;
            let f = file.clone();
            tokio::task::spawn_blocking(move || rnr_images::check_rootfs_tarball(&f)).await??;
            import(cfg, &name, &file).await
        }
        ImageCommand::List => {
            let driver = image_driver(cfg).await?;
            println!("{:<24} {:>10}", "NAME", "SIZE");
            for img in driver.images().list().await? {
                let size = img
                    .size_bytes
                    .map(|s| format!("{:.1} MB", s as f64 / 1e6))
                    .unwrap_or_else(|| "-".into());
                println!("{:<24} {:>10}", img.name, size);
            }
            Ok(())
        }
        ImageCommand::Rm { name } => {
            let driver = image_driver(cfg).await?;
            match driver.images().remove(&name).await {
                Ok(()) => {
                    eprintln!("removed image {name}; machines started from it keep running");
                    Ok(())
                }
                Err(DriverError::ImageNotFound(_)) => anyhow::bail!(
                    "no image named {name:?} in the {} driver; `rnr image list` shows the \
                     images there are",
                    driver.name()
                ),
                Err(e) => Err(anyhow::Error::new(e).context(format!("cannot remove image {name}"))),
            }
        }
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}
