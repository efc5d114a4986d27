//! Entering a network namespace on a thread we own, and always leaving it.
//!
//! `setns` moves only the calling thread. We never switch the main thread:
//! work that must start inside the container (opening its netlink and ioctl
//! sockets) runs on a short-lived thread whose guard switches back on every
//! path, panics included. Sockets keep the namespace they were opened in.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use weft_cni::error::{self, Error, Result};

/// Switches the current thread into a namespace until dropped.
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    pub fn enter(target: &File) -> Result<Self> {
        let original = File::open("/proc/thread-self/ns/net").map_err(|e| {
            Error::new(error::NETNS_FAILURE, "cannot open own netns").with_details(e)
        })?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            Error::new(error::NETNS_FAILURE, "cannot enter the container's netns").with_details(e)
        })?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // This thread is ours and ends right after; nothing else runs on it.
            tracing::error!(error = %e, "cannot return to the original netns");
        }
    }
}

/// Opens a namespace file, telling a vanished namespace from other failures.
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            error::UNKNOWN_CONTAINER
        } else {
            error::NETNS_FAILURE
        };
        Error::new(code, format!("cannot open netns {}", path.display())).with_details(e)
    })
}

/// Runs `f` on a fresh thread inside `target`.
pub fn run_in<T: Send>(target: &File, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _guard = NetnsGuard::enter(target)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::unexpected("netns worker thread panicked")))
    })
}

/// The current thread's namespace, for moving links back to it.
pub fn current() -> Result<File> {
    File::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::new(error::NETNS_FAILURE, "cannot open own netns").with_details(e))
}
