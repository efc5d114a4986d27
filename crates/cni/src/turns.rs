//! One operation at a time per attachment on a node, and a DEL that an
//! ADD still running cannot outlive.
//!
//! A runtime kills a plugin that takes too long, but the weft-ipam process
//! the plugin started goes on, and may commit its reservation after the
//! runtime's DEL has found nothing to release: a leak no DEL will come back
//! for. So ADD and DEL take a lock on a file per attachment (DEL waits for a
//! running ADD to finish, bounded by `timeoutMs`), and DEL writes into that
//! file when it ran. An ADD that gets the lock after a DEL that ran after
//! the ADD's process started gives up instead of reserving: the runtime has
//! already given up on it.
//!
//! Times are CLOCK_BOOTTIME nanoseconds; a process's start is the kernel's
//! (`/proc/self/stat`), taken at fork, so an ADD delayed between fork and
//! its first instruction still counts as started before the DEL. Its
//! granularity is a clock tick (10 ms): an ADD started within a tick after a
//! DEL of the same attachment is refused with code 11 and can be retried.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{self, Error, Result};

/// Files untouched for this long are swept by DEL: no operation lives
/// longer than the 60 s `timeoutMs` allows.
const SWEEP_AFTER: Duration = Duration::from_secs(120);
/// One DEL in this many sweeps: a sweep stats every file of two minutes of
/// churn, which would otherwise be most of a DEL's own cost.
const SWEEP_ONE_IN: u32 = 32;

/// The lock of one attachment, held until dropped.
#[derive(Debug)]
pub struct Turn {
    lock: crate::files::Lock,
}

pub fn path(data_dir: &Path, network: &str, cid: &str, ifname: &str) -> PathBuf {
    let name = format!("{cid}.{ifname}");
    // Container IDs have no length limit; file names do.
    let name = if name.len() > 200 {
        format!("{:016x}", fnv64(name.as_bytes()))
    } else {
        name
    };
    data_dir.join(network).join("turns").join(name)
}

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325, |h, c| {
        (h ^ *c as u64).wrapping_mul(0x100000001b3)
    })
}

fn take(path: &Path, within: Duration) -> Result<Turn> {
    let io = |e: std::io::Error| {
        Error::new(error::IO_FAILURE, format!("cannot lock {}", path.display())).with_details(e)
    };
    match crate::files::lock_within(path, within).map_err(io)? {
        Some(lock) => Ok(Turn { lock }),
        None => Err(Error::new(
            error::TRY_AGAIN_LATER,
            format!(
                "another operation on this attachment is still running ({} is locked)",
                path.display()
            ),
        )),
    }
}

impl Turn {
    /// ADD's turn: Err(11) when a DEL of this attachment ran after this
    /// process started.
    pub fn for_add(path: &Path, within: Duration) -> Result<Turn> {
        let mut t = take(path, within)?;
        let started = process_start_ns();
        if let (Some(del), Some(start)) = (t.last_del(), started) {
            if del >= start {
                return Err(Error::new(
                    error::TRY_AGAIN_LATER,
                    "this attachment was deleted while its ADD waited; nothing reserved",
                ));
            }
        }
        Ok(t)
    }

    /// DEL's turn: waits for a running ADD, then marks the time.
    pub fn for_del(path: &Path, within: Duration) -> Result<Turn> {
        let mut t = take(path, within)?;
        if let Some(now) = boottime_ns() {
            let f = t.lock.file();
            let _ = f.set_len(0);
            let _ = f.rewind();
            let _ = f.write_all(now.to_string().as_bytes());
        }
        if let Some(dir) = path.parent().filter(|_| sweep_now()) {
            sweep(dir, path);
        }
        Ok(t)
    }

    fn last_del(&mut self) -> Option<u128> {
        let mut s = String::new();
        let f = self.lock.file();
        f.rewind().ok()?;
        f.read_to_string(&mut s).ok()?;
        s.trim().parse().ok()
    }
}

fn sweep_now() -> bool {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id()) % SWEEP_ONE_IN == 0
}

/// Removes turn files nobody has touched for SWEEP_AFTER.
fn sweep(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let p = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > SWEEP_AFTER);
        if old && p != keep {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn boottime_ns() -> Option<u128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128)
}

/// When the kernel made this process (its fork), on CLOCK_BOOTTIME.
fn process_start_ns() -> Option<u128> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    start_from_stat(&stat, clock_ticks()?)
}

fn clock_ticks() -> Option<u128> {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as u128)
}

/// Field 22 of /proc/<pid>/stat, counted after the command name (which
/// may hold spaces and parentheses, so from the last ')').
fn start_from_stat(stat: &str, ticks_per_s: u128) -> Option<u128> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u128 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(ticks * 1_000_000_000 / ticks_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (weft ipam) x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456 99";
        assert_eq!(start_from_stat(stat, 100), Some(1_234_560_000_000));
        assert!(process_start_ns().is_some_and(|s| s <= boottime_ns().unwrap()));
    }

    #[test]
    fn an_add_after_a_del_that_ran_after_it_started_gives_up() {
        let dir = std::env::temp_dir().join(format!("weft-turns-{}", std::process::id()));
        let p = path(&dir, "net", "c1", "eth0");
        // This process started before the DEL below ran.
        drop(Turn::for_add(&p, Duration::from_millis(10)).unwrap());
        drop(Turn::for_del(&p, Duration::from_millis(10)).unwrap());
        let e = Turn::for_add(&p, Duration::from_millis(10)).unwrap_err();
        assert_eq!(e.code, 11);
        // A DEL holding the turn makes another wait, then give up in time.
        let held = Turn::for_del(&p, Duration::from_millis(10)).unwrap();
        let e = Turn::for_del(&p, Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.code, 11, "{}", e.msg);
        drop(held);
        assert!(Turn::for_del(&p, Duration::from_millis(30)).is_ok());
        // Long names become a hash.
        let long = path(&dir, "net", &"a".repeat(300), "eth0");
        assert!(long.file_name().unwrap().len() == 16);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
