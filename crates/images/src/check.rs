//! Checking a user-supplied root filesystem tarball before it is imported, so a wrong
//! file fails here with a reason instead of later as a machine that cannot start.

use crate::error::IoContext;
use crate::ImageError;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path};

/// How many symlinks one lookup may follow, as in Linux's path resolution.
const MAX_SYMLINKS: usize = 40;

/// What a tar entry is, as far as resolving `/bin/sh` cares.
#[derive(Debug, Clone)]
enum Node {
    Dir,
    File,
    Symlink(String),
    /// A hardlink to another entry (normalized path).
    Hardlink(String),
    Other,
}

/// Checks that `path` is a readable, uncompressed tar holding a root filesystem with a
/// usable `/bin/sh` (a file, or a symlink or hardlink that leads to one, as in merged-/usr
/// Debian where `bin` is a symlink to `usr/bin`).
///
/// Entries that would climb out of the root with `..` are rejected too: the native driver
/// extracts these tarballs itself.
pub fn check_rootfs_tarball(path: &Path) -> Result<(), ImageError> {
    let invalid = |reason: String| ImageError::InvalidTarball {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).at(path)?;
    let meta = file.metadata().at(path)?;
    if meta.is_dir() {
        return Err(invalid("it is a directory, not a tar file".into()));
    }
    let mut magic = [0u8; 6];
    let read = read_up_to(&mut file, &mut magic).at(path)?;
    if read == 0 {
        return Err(invalid("the file is empty".into()));
    }
    if let Some(kind) = compression(&magic[..read]) {
        return Err(invalid(format!(
            "it is {kind}-compressed; images must be plain tar (decompress it first)"
        )));
    }
    let file = std::fs::File::open(path).at(path)?;

    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| invalid(format!("not a readable tar archive: {e}")))?;
    let mut nodes: HashMap<String, Node> = HashMap::new();
    let mut count = 0u64;
    for entry in entries {
        let entry = entry.map_err(|e| {
            invalid(if count == 0 {
                format!("not a readable tar archive: {e}")
            } else {
                format!("the tar archive is damaged after {count} entries: {e}")
            })
        })?;
        count += 1;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let Some(key) = normalize(&name) else {
            return Err(invalid(format!(
                "entry {name:?} climbs out of the root with `..`"
            )));
        };
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Node::File,
            tar::EntryType::Symlink => Node::Symlink(link.unwrap_or_default()),
            tar::EntryType::Link => {
                let target = link.unwrap_or_default();
                match normalize(&target) {
                    Some(t) => Node::Hardlink(t),
                    None => {
                        return Err(invalid(format!(
                            "hardlink {name:?} points out of the root to {target:?}"
                        )))
                    }
                }
            }
            _ => Node::Other,
        };
        if !key.is_empty() {
            nodes.insert(key, node);
        }
    }
    if count == 0 {
        return Err(invalid("the tar archive has no entries".into()));
    }

    match resolve(&nodes, "bin/sh") {
        Ok(()) => Ok(()),
        Err(why) => {
            let hint = if nodes.contains_key("manifest.json") && !nodes.contains_key("bin") {
                " (this looks like `docker save` output; use `docker export` of a container \
                 to get a root filesystem)"
            } else {
                ""
            };
            Err(invalid(format!("{why}{hint}")))
        }
    }
}

/// Reads until `buf` is full or EOF.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn compression(magic: &[u8]) -> Option<&'static str> {
    const KINDS: [(&[u8], &str); 4] = [
        (&[0x1f, 0x8b], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (b"BZh", "bzip2"),
    ];
    KINDS
        .iter()
        .find(|(m, _)| magic.starts_with(m))
        .map(|(_, kind)| *kind)
}

/// An entry name as a path relative to the image root (`./bin/sh`, `/bin/sh` and
/// `bin/sh/` all become `bin/sh`; the root itself becomes ""). `None` if it uses `..`.
fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for comp in Path::new(name).components() {
        match comp {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Resolves `path` inside the archive the way the kernel would inside the machine:
/// symlinks in any component are followed, absolute targets from the image root, and
/// `..` never goes above it. Succeeds if it ends at a regular file.
fn resolve(nodes: &HashMap<String, Node>, path: &str) -> Result<(), String> {
    let shown = format!("/{path}");
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(part);
        let here = done.join("/");
        let last = pending.iter().all(|p| p.is_empty() || p == ".");
        let mut node = nodes.get(&here);
        let mut hardlinks = 0;
        while let Some(Node::Hardlink(target)) = node {
            hardlinks += 1;
            if hardlinks > MAX_SYMLINKS {
                return Err(format!("{shown} leads into a hardlink loop at /{here}"));
            }
            node = nodes.get(target);
        }
        match node {
            Some(Node::Symlink(target)) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(format!("{shown} leads into a symlink loop at /{here}"));
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                pending.extend(target.split('/').rev().map(str::to_owned));
            }
            Some(Node::File) if last => return Ok(()),
            Some(Node::Dir) if last => return Err(format!("{shown} is a directory")),
            Some(Node::Other) if last => {
                return Err(format!("{shown} is not a regular file or a symlink to one"))
            }
            Some(Node::File | Node::Other) => {
                return Err(format!(
                    "{shown} cannot be reached: /{here} is not a directory"
                ))
            }
            // Tars need not list parent directories; a missing one is implied by its
            // children.
            Some(Node::Dir) | None if !last => {}
            None if here == path => {
                return Err(format!(
                    "it has no {shown}; an image needs a shell there (a file or a symlink)"
                ))
            }
            None => {
                return Err(format!(
                    "{shown} resolves to /{here}, which is not in the tarball"
                ))
            }
            Some(Node::Dir) | Some(Node::Hardlink(_)) => {
                return Err(format!("{shown} cannot be resolved at /{here}"))
            }
        }
    }
    Err(format!("{shown} resolves to the root directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(entries: &[(&str, Node)]) -> HashMap<String, Node> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn link(t: &str) -> Node {
        Node::Symlink(t.into())
    }

    #[test]
    fn normalizes_entry_names() {
        assert_eq!(normalize("./bin/sh").as_deref(), Some("bin/sh"));
        assert_eq!(normalize("/bin/sh").as_deref(), Some("bin/sh"));
        assert_eq!(normalize("bin/./sh/").as_deref(), Some("bin/sh"));
        assert_eq!(normalize("./").as_deref(), Some(""));
        assert_eq!(normalize("bin/../../etc"), None);
    }

    #[test]
    fn resolves_layouts() {
        let plain = nodes(&[("bin", Node::Dir), ("bin/sh", Node::File)]);
        assert_eq!(resolve(&plain, "bin/sh"), Ok(()));

        let busybox = nodes(&[("bin/busybox", Node::File), ("bin/sh", link("busybox"))]);
        assert_eq!(resolve(&busybox, "bin/sh"), Ok(()));

        let absolute = nodes(&[
            ("bin/busybox", Node::File),
            ("bin/sh", link("/bin/busybox")),
        ]);
        assert_eq!(resolve(&absolute, "bin/sh"), Ok(()));

        let merged = nodes(&[
            ("bin", link("usr/bin")),
            ("usr/bin/sh", link("dash")),
            ("usr/bin/dash", Node::File),
        ]);
        assert_eq!(resolve(&merged, "bin/sh"), Ok(()));

        let escaping = nodes(&[
            ("bin/sh", link("../../../../bin/dash")),
            ("bin/dash", Node::File),
        ]);
        assert_eq!(
            resolve(&escaping, "bin/sh"),
            Ok(()),
            "`..` stops at the root"
        );

        let hard = nodes(&[
            ("bin/sh", Node::Hardlink("bin/dash".into())),
            ("bin/dash", Node::File),
        ]);
        assert_eq!(resolve(&hard, "bin/sh"), Ok(()));
    }

    #[test]
    fn explains_unresolvable_layouts() {
        let err = |n: &HashMap<String, Node>| resolve(n, "bin/sh").expect_err("should fail");

        assert!(err(&nodes(&[("etc/passwd", Node::File)])).contains("has no /bin/sh"));
        assert!(err(&nodes(&[("bin/sh", link("dash"))])).contains("/bin/dash, which is not"));
        assert!(err(&nodes(&[("bin/sh", Node::Dir)])).contains("is a directory"));
        assert!(err(&nodes(&[("bin/sh", link("sh"))])).contains("loop"));
        assert!(err(&nodes(&[("bin", Node::File)])).contains("not a directory"));
        assert!(err(&nodes(&[("bin/sh", Node::Other)])).contains("not a regular file"));
    }

    #[test]
    fn detects_compression() {
        assert_eq!(compression(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(compression(b"BZh91AY"), Some("bzip2"));
        assert_eq!(compression(b"./\0\0\0\0"), None);
    }
}
