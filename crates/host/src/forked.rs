//! Children that outlive the plugin's answer: the deferred half of a link
//! deletion (`fastdel`) and the ARP repeats (`garp`). Both fork, and the
//! child must not hold anything the runtime waits on, nor call anything but
//! async-signal-safe functions until it exits.

use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};

use nix::unistd::ForkResult;
use weft_cni::error::{Error, Result};

/// What both children need from before the fork: /dev/null for their stdio,
/// and a pipe (the parent keeps one end, the child the other).
pub fn prepare() -> Result<(File, OwnedFd, OwnedFd)> {
    let devnull = File::open("/dev/null")
        .map_err(|e| Error::unexpected("cannot open /dev/null").with_details(e))?;
    let (rd, wr) = nix::unistd::pipe().map_err(|e| Error::unexpected("pipe").with_details(e))?;
    Ok((devnull, rd, wr))
}

/// fork(2), its failure as a CNI error.
///
/// # Safety
/// The child may only make async-signal-safe calls, then `_exit`.
pub unsafe fn fork() -> Result<ForkResult> {
    // SAFETY: the caller keeps the child to async-signal-safe calls.
    unsafe { nix::unistd::fork() }.map_err(|e| Error::unexpected("fork").with_details(e))
}

/// Cuts a forked child loose from what the runtime waits on: stdio goes to
/// `devnull` (the runtime reads our stdout until EOF), and every other fd
/// but `a` and `b` is closed (a delegate's stdin pipe, say, would keep its
/// peer waiting for EOF until the child exits). Async-signal-safe.
///
/// # Safety
/// Only in a forked child, before it execs or exits: it closes fds that
/// the parent's objects still own in the child's copy of memory.
pub unsafe fn detach(devnull: RawFd, a: RawFd, b: RawFd) {
    // SAFETY: dup2 and close on fds; async-signal-safe.
    unsafe {
        libc::dup2(devnull, 0);
        libc::dup2(devnull, 1);
        libc::dup2(devnull, 2);
        close_all_but(a, b);
    }
}

/// Closes every fd above stdio except `a` and `b`; async-signal-safe.
unsafe fn close_all_but(a: RawFd, b: RawFd) {
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    let ranges = [
        (3u32, lo.wrapping_sub(1)),
        (lo + 1, hi.wrapping_sub(1)),
        (hi + 1, u32::MAX),
    ];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: closing fds is async-signal-safe; close_range needs Linux 5.9.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        if rc != 0 {
            for fd in first..=last.min(4096) {
                // SAFETY: as above.
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
}
