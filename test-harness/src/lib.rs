//! weft's test harness: simulated hosts as network namespaces, each with its
//! own ovsdb-server and ovs-vswitchd; containers as namespaces; plugins exec'd
//! exactly as a runtime execs them. Everything is torn down on every exit path.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod cleanup;
pub mod cluster;
pub mod etcd;
pub mod fabric;
pub mod host;
pub mod ipamtest;
pub mod netns;
pub mod ovs;
pub mod pki;
pub mod probe;
pub mod rawsock;
pub mod runtime;

pub use host::{Container, Host};
pub use runtime::{Attach, Call, Network, Outcome};

/// Fails loudly when not root: a root test that quietly passes tests nothing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (network namespaces, OVS); run them as root"
    );
}

/// A process stopped with SIGSTOP (a stalled daemon) until this is
/// dropped, on every exit path of a test.
pub struct Stopped(i32);

impl Stopped {
    pub fn new(pid: u32) -> std::io::Result<Stopped> {
        let pid = pid as i32;
        // SAFETY: a signal to a process the caller started.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Stopped(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// How much longer than on this machine things may take where the tests
/// run: `WEFT_TIME_SCALE` (weft-harness vm-test sets it for an emulated
/// guest), 1 by default. Bounds on waiting scale with it; measured figures
/// do not.
pub fn time_scale() -> u32 {
    std::env::var("WEFT_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// Polls `f` every `every` until it holds; panics naming `what` when it has
/// not within `within`. Returns how long it took.
#[allow(clippy::panic)]
pub fn wait_for(
    what: &str,
    within: std::time::Duration,
    every: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> std::time::Duration {
    let within = within * time_scale();
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(every);
    }
    t0.elapsed()
}
