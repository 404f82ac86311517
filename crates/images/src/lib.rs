//! Builds rootnroll machine images as root filesystem tarballs: an uncompressed tar of `/`
//! with numeric owners, setuid bits, hardlinks and file capabilities preserved and device
//! nodes left out (the runtime provides `/dev`). Drivers import these tarballs (Docker with
//! `docker import`, the native crun driver by extracting them).
//!
//! Everything here is blocking and may run for minutes (debootstrap); async callers wrap
//! the calls in `spawn_blocking`. Progress is reported through [`Progress`].

mod check;
mod debian;
mod error;
mod pack;
mod tiny;
mod tool;
mod workdir;

pub use check::check_rootfs_tarball;
pub use debian::{build_debian, DebianSpec};
pub use error::ImageError;
pub use tiny::build_tiny;

/// Receives progress of a long build. Implementations must be cheap: they are called from
/// the build's thread for every package and file.
pub trait Progress: Send + Sync {
    /// A new stage begins ("resolving", "downloading", "extracting", "installing",
    /// "cleaning", "packing"), with an optional total of units.
    fn stage(&self, name: &str, total: Option<u64>);
    /// `n` more units of the current stage are done.
    fn advance(&self, n: u64);
    /// A free-form line (e.g. the package being unpacked).
    fn message(&self, msg: &str);
}

/// A [`Progress`] that discards everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn message(&self, _msg: &str) {}
}

/// The longest image name: names end up in Docker tags and file names, and 63 keeps them
/// valid as a DNS label too.
const MAX_NAME_LEN: usize = 63;

/// Checks an image name: `[a-z0-9][a-z0-9._-]{0,62}`.
///
/// Names become Docker image references and file names on disk, so they are kept to a
/// set that is valid, unambiguous and safe in both.
pub fn validate_name(name: &str) -> Result<(), ImageError> {
    let fail = |reason: String| {
        Err(ImageError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return fail("the name is empty".into());
    };
    if name.len() > MAX_NAME_LEN {
        return fail(format!(
            "it is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return fail(format!(
            "it starts with {first:?}; it must start with a lowercase letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return fail(format!(
            "it contains {bad:?}; only a-z, 0-9, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in [
            "a",
            "0",
            "debian-12",
            "rnr.tiny_v2",
            "x".repeat(63).as_str(),
        ] {
            assert!(validate_name(name).is_ok(), "{name} should be valid");
        }
    }

    #[test]
    fn invalid_names() {
        let cases = [
            ("", "empty"),
            ("-debian", "must start"),
            (".hidden", "must start"),
            ("_x", "must start"),
            ("Debian", "must start"),
            ("debIan", "'I'"),
            ("deb ian", "' '"),
            ("deb/ian", "'/'"),
            ("deb:ian", "':'"),
            ("débian", "'é'"),
        ];
        for (name, want) in cases {
            let err = validate_name(name).expect_err(name).to_string();
            assert!(
                err.contains(want),
                "{name:?}: {err:?} should mention {want:?}"
            );
            assert!(
                err.contains(&format!("{name:?}")),
                "{err:?} should name {name:?}"
            );
        }
        let long = "x".repeat(64);
        let err = validate_name(&long).expect_err("64 chars").to_string();
        assert!(err.contains("at most 63"), "{err}");
    }
}
