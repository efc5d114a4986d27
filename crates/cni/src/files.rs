//! Files the plugins keep for themselves (allocation and VLAN hints, locks):
//! only root may read them, and a reader never sees one half-written.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// An exclusive lock on a file, held until dropped. The kernel drops it
/// when the process dies, so a crash cannot wedge it.
#[derive(Debug)]
pub struct Lock {
    file: std::fs::File,
}

impl Lock {
    /// The locked file, open for reading and writing.
    pub fn file(&mut self) -> &mut std::fs::File {
        &mut self.file
    }
}

fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

fn flock(file: &std::fs::File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether another process holds the lock on `path` now (a daemon that
/// holds it for its lifetime: the kernel drops it when the process dies).
/// A missing file is no holder.
pub fn held_elsewhere(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    loop {
        match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            // Ours for a moment; closing the file releases it.
            Ok(()) => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Waits for the lock on `path` as long as it takes.
pub fn lock(path: &Path) -> std::io::Result<Lock> {
    let file = open_lock_file(path)?;
    loop {
        match flock(&file, libc::LOCK_EX) {
            Ok(()) => return Ok(Lock { file }),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits for the lock on `path` at most `within`: None when another
/// process still holds it then.
pub fn lock_within(path: &Path, within: Duration) -> std::io::Result<Option<Lock>> {
    let file = open_lock_file(path)?;
    let until = Instant::now() + within;
    loop {
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => return Ok(Some(Lock { file })),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= until {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, the file
/// 0600 and any directory made on the way 0700.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_and_dirs() {
        let base = std::env::temp_dir().join(format!("weft-files-{}", std::process::id()));
        let path = base.join("a/b/hint");
        write_private(&path, b"4001").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"4001");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&base.join("a/b")), 0o700);
        write_private(&path, b"4002").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"4002");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_held_lock_makes_a_bounded_wait_give_up_and_is_free_once_dropped() {
        let base = std::env::temp_dir().join(format!("weft-lock-{}", std::process::id()));
        let path = base.join("locks/one");
        let held = lock(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // flock locks belong to the open file description: a second open
        // in this process contends like another process would.
        let t0 = Instant::now();
        assert!(lock_within(&path, Duration::from_millis(50))
            .unwrap()
            .is_none());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        drop(held);
        assert!(lock_within(&path, Duration::from_millis(50))
            .unwrap()
            .is_some());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
