//! A machine's files as the host may touch them: looked up inside the machine's root
//! (its `/proc/<pid>/root`) as though chrooted there, so that no symlink or `..` leads out
//! of the machine and no /proc magic link is followed (openat2 with RESOLVE_IN_ROOT and
//! RESOLVE_NO_MAGICLINKS), and only ever opened for reading when they are regular files.
//!
//! The machine's root may have made any file anything: a FIFO (opening it blocks), a
//! device node of the host's (the host is not held by the machine's device cgroup, and
//! opening some devices acts), a socket, a huge file. [`lookup`] opens nothing (O_PATH);
//! [`read_regular`] checks what it found before opening that very inode to read it.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// `path` inside the tree rooted at `root`, as an O_PATH descriptor (nothing is opened:
/// no FIFO waits, no device acts) and what it is.
pub fn lookup(root: &Path, path: &str) -> io::Result<(File, Metadata)> {
    let dir = File::open(root)?;
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2(2) with a valid dirfd, a NUL-terminated path and a properly sized
    // open_how; returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat2 just returned, owned by nothing else.
    let found = File::from(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    let md = found.metadata()?;
    Ok((found, md))
}

/// An error unless `md` is a regular file's: saying what `path` is instead.
pub fn require_regular(path: &str, md: &Metadata) -> io::Result<()> {
    let kind = md.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{path} is {what}, not a regular file"),
    ))
}

/// The regular file `path` of the tree at `root`, at most `max` bytes of it (a larger
/// one is an error). `proc_root` is the host's procfs: the file is opened for reading
/// through `proc_root/self/fd/N`, which names the very inode checked, wherever its path
/// leads by now.
pub fn read_regular(proc_root: &Path, root: &Path, path: &str, max: u64) -> io::Result<Vec<u8>> {
    let (found, md) = lookup(root, path)?;
    require_regular(path, &md)?;
    if md.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} is {} bytes, more than the {max} read", md.len()),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(
            proc_root
                .join("self/fd")
                .join(found.as_raw_fd().to_string()),
        )?;
    let again = file.metadata()?;
    if (again.dev(), again.ino()) != (md.dev(), md.ino()) {
        return Err(io::Error::other(format!("{path} changed while opened")));
    }
    let mut data = Vec::new();
    // One byte more than allowed tells a file that grew since.
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} grew past the {max} bytes read"),
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::read_regular;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    const MAX: u64 = 1 << 20;

    fn read(root: &Path, path: &str) -> Result<String, String> {
        read_regular(Path::new("/proc"), root, path, MAX)
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_regular_file_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        assert_eq!(
            read(dir.path(), "/etc/passwd").unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        let err = read_regular(Path::new("/proc"), dir.path(), "/etc/group", MAX).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, "host's own\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        // Absolute: the machine's path of that name, which it does not have.
        symlink(&secret, etc.join("passwd")).unwrap();
        let err = read(dir.path(), "/etc/passwd").unwrap_err();
        assert!(err.contains("No such file"), "{err}");
        // Climbing: `..` stops at the root.
        std::fs::remove_file(etc.join("passwd")).unwrap();
        let climb = format!("../../../../../../..{}", secret.display());
        symlink(&climb, etc.join("passwd")).unwrap();
        let err = read(dir.path(), "/etc/passwd").unwrap_err();
        assert!(err.contains("No such file"), "{err}");
        // Both resolve to the root's own file once it has one.
        let inside = dir.path().join(secret.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, "the machine's\n").unwrap();
        assert_eq!(read(dir.path(), "/etc/passwd").unwrap(), "the machine's\n");
    }

    #[test]
    fn fifos_devices_and_huge_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let c = |n: &str| std::ffi::CString::new(p(n).to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3)/mknod(2) with NUL-terminated paths in our own temp dir.
        unsafe {
            assert_eq!(libc::mkfifo(c("fifo").as_ptr(), 0o644), 0);
            // The host's /dev/null (1:3); as root a test may make one.
            libc::mknod(
                c("null").as_ptr(),
                libc::S_IFCHR | 0o644,
                libc::makedev(1, 3),
            );
        }
        let started = std::time::Instant::now();
        let err = read(dir.path(), "/fifo").unwrap_err();
        assert!(err.contains("a FIFO"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        if p("null").exists() {
            let err = read(dir.path(), "/null").unwrap_err();
            assert!(err.contains("a device"), "{err}");
        }
        symlink("/dev/zero", p("zero")).unwrap();
        assert!(
            read(dir.path(), "/zero").is_err(),
            "/dev/zero of the root: none"
        );
        let big = std::fs::File::create(p("big")).unwrap();
        big.set_len(1 << 30).unwrap();
        let err = read(dir.path(), "/big").unwrap_err();
        assert!(err.contains("more than the 1048576 read"), "{err}");
        let err = read(dir.path(), "/").unwrap_err();
        assert!(err.contains("a directory"), "{err}");
    }
}
