//! Everything the harness creates is registered here, so it is torn down on
//! every exit path: `Drop` on success and on test panics, the signal handler
//! on Ctrl-C or SIGTERM, and the sweep at start-up for what a SIGKILLed run
//! left behind (names carry the creating pid; a dead pid means stale).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Clone)]
pub enum Resource {
    Netns(String),
    Process(i32),
    Dir(PathBuf),
}

static REGISTRY: Mutex<Vec<(u64, Resource)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);
static INIT: Once = Once::new();
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static MAKING: Mutex<()> = Mutex::new(());

/// A registered resource; dropping it tears the resource down.
#[derive(Debug)]
pub struct Token(u64);

pub fn register(r: Resource) -> Token {
    init();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, r));
    Token(id)
}

impl Drop for Token {
    fn drop(&mut self) {
        let taken = {
            let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            reg.iter()
                .position(|(id, _)| *id == self.0)
                .map(|i| reg.remove(i).1)
        };
        if let Some(r) = taken {
            teardown(&r);
        }
    }
}

/// Processes the harness itself runs (OVS, etcd): not leftovers of a plugin.
pub fn registered_pids() -> Vec<i32> {
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.iter()
        .filter_map(|(_, r)| {
            if let Resource::Process(p) = r {
                Some(*p)
            } else {
                None
            }
        })
        .collect()
}

/// Hold this from before making a resource until it is registered. The
/// signal handler takes it before tearing down and keeps it until the process
/// exits, so a namespace whose `ip netns add` was running at Ctrl-C is
/// registered (and torn down) rather than created after the teardown, and
/// nothing is made once the teardown has begun.
pub fn making() -> std::sync::MutexGuard<'static, ()> {
    MAKING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the signal handler and sweeps leftovers of dead runs, once.
pub fn init() {
    INIT.call_once(|| {
        sweep_stale();
        let _ = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("weft-harness: interrupted; cleaning up");
            let _no_more = making();
            teardown_all();
            std::process::exit(130);
        });
    });
}

/// Call before exiting normally: if Ctrl-C is being handled, the main thread
/// (which may be failing because its namespaces vanish) must not exit under
/// the handler's feet, so it waits for the handler to end the process.
pub fn yield_to_interrupt() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

pub fn teardown_all() {
    let all: Vec<Resource> = {
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        reg.drain(..).map(|(_, r)| r).collect()
    };
    // Newest first: processes before the namespaces and dirs they use.
    for r in all.iter().rev() {
        teardown(r);
    }
}

fn teardown(r: &Resource) {
    match r {
        Resource::Process(pid) => stop_pid(*pid),
        Resource::Netns(name) => {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
        Resource::Dir(path) => {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// SIGTERM, a grace period, then SIGKILL; reaps the child if it is ours.
pub fn stop_pid(pid: i32) {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            Ok(_) => return,
            // Not our child: poll for its disappearance instead.
            Err(_) if kill(p, None).is_err() => return,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(p, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(p, None);
}

pub const PREFIX: &str = "wft-";

/// A name for something this process creates: `wft-<pid>-<label>`.
pub fn name(label: &str) -> String {
    format!("{PREFIX}{}-{label}", std::process::id())
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes namespaces, processes and dirs left by harness runs that died
/// without cleaning up (SIGKILL, OOM, a power cut).
pub fn sweep_stale() {
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if owner_pid(&n).is_some_and(|p| !pid_alive(p)) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &n])
                    .status();
            }
        }
    }
    for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            let Some(owner) = n
                .strip_prefix("weft-harness-")
                .and_then(|r| r.split('-').next()?.parse::<i32>().ok())
            else {
                continue;
            };
            if pid_alive(owner) {
                continue;
            }
            kill_pidfiles(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Stops the processes whose pid files lie under `dir`, if they still run one
/// of the programs we start (a recycled pid must not be killed).
fn kill_pidfiles(dir: &Path) {
    let Ok(walk) = std::fs::read_dir(dir) else {
        return;
    };
    for e in walk.flatten() {
        let path = e.path();
        if path.is_dir() {
            kill_pidfiles(&path);
        } else if path.extension().is_some_and(|x| x == "pid") {
            let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if ["ovsdb-server", "ovs-vswitchd", "etcd", "weftctl"].contains(&comm.trim()) {
                stop_pid(pid);
            }
        }
    }
}
