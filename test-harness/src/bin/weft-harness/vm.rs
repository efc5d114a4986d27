//! `weft-harness vm`: runs a command as root inside a QEMU guest that boots
//! Debian 12's own kernel, where the openvswitch module (the kernel
//! datapath) exists. The guest comes from `scripts/vm-image.sh` (cached);
//! the checkout is shared with it at the same path over 9p, so the built
//! binaries and test binaries run there as they are. The guest has no
//! network device at all.
//!
//! The QEMU process and the run's folder are registered with [`cleanup`], so
//! they go on every exit path (a failing command, Ctrl-C, a panic). A guest
//! that does not reach its boot marker in time is an error that carries the
//! console, never a pass.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use weft_harness::cleanup::{self, Resource};
use weft_harness::host::ScratchDir;

const BOOTED: &str = "WEFT-VM-BOOTED";
const EXITED: &str = "WEFT-VM-EXIT ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The checkout shared with the guest, at the same path.
    pub src: PathBuf,
    /// The guest's files (vmlinuz, initrd.img, root.ext4).
    pub image: PathBuf,
    /// Environment for the command (KEY=VALUE).
    pub env: Vec<String>,
    /// None: KVM when it boots here, TCG otherwise.
    pub accel: Option<Accel>,
    pub boot_within: Duration,
    pub run_within: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
}

impl Options {
    /// Defaults for a run from `src`, with the image `scripts/vm-image.sh` makes.
    pub fn new(src: &Path) -> Result<Self> {
        Ok(Options {
            src: src.to_path_buf(),
            image: image(src)?,
            env: Vec::new(),
            accel: None,
            boot_within: Duration::from_secs(180),
            run_within: Duration::from_secs(3600),
            memory_mib: 4096,
            cpus: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
        })
    }
}

/// The cached guest, made first if needed (minutes, once).
pub fn image(src: &Path) -> Result<PathBuf> {
    let out = Command::new(src.join("scripts/vm-image.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/vm-image.sh")?;
    if !out.status.success() {
        bail!("scripts/vm-image.sh failed ({})", out.status);
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(printed.trim());
    if !dir.join("root.ext4").is_file() {
        bail!("scripts/vm-image.sh printed {printed:?}, not the folder of a guest");
    }
    Ok(dir)
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The command's exit code in the guest.
    pub code: i32,
    pub accel: Accel,
    pub boot: Duration,
}

/// Runs `cmd` (a bash script) in a guest, streaming its output to stdout.
pub fn run(cmd: &str, o: &Options) -> Result<Outcome> {
    let accel = match o.accel {
        Some(a) => a,
        None if kvm_usable(&o.image) => Accel::Kvm,
        None => Accel::Tcg,
    };
    match boot_and_run(cmd, o, accel) {
        Err(e) if accel == Accel::Kvm && o.accel.is_none() && e.is::<NoBoot>() => {
            // Seen here: /dev/kvm opens, but the guest hangs before its
            // kernel prints anything. Remember it, and emulate.
            eprintln!("weft-harness vm: the KVM guest did not boot; using TCG from now on");
            let _ = std::fs::write(kvm_stamp(&o.image), "the KVM guest did not boot\n");
            boot_and_run(cmd, o, Accel::Tcg)
        }
        r => r,
    }
}

/// The guest did not reach its boot marker; carries the console.
#[derive(Debug)]
pub struct NoBoot(pub String);

impl std::fmt::Display for NoBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoBoot {}

fn kvm_stamp(image: &Path) -> PathBuf {
    image.join("kvm-does-not-boot")
}

fn kvm_usable(image: &Path) -> bool {
    !kvm_stamp(image).exists()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

fn boot_and_run(cmd: &str, o: &Options, accel: Accel) -> Result<Outcome> {
    let dir = ScratchDir::new("vm")?;
    let share = dir.path.join("share");
    std::fs::create_dir(&share)?;
    std::fs::copy(o.src.join("scripts/vm-init.sh"), share.join("init"))
        .context("copying scripts/vm-init.sh")?;
    std::fs::write(share.join("cmd"), cmd)?;
    std::fs::write(share.join("src"), o.src.to_string_lossy().as_bytes())?;
    std::fs::write(share.join("env"), o.env.join("\n") + "\n")?;

    let boot_within = match accel {
        // A KVM guest that works boots in seconds; one that hangs should
        // not cost the whole bound before TCG gets its turn.
        Accel::Kvm => o.boot_within.min(Duration::from_secs(30)),
        Accel::Tcg => o.boot_within,
    };
    let virtfs = |path: &Path, tag: &str| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap",
            path.display()
        )
    };
    let making = cleanup::making();
    let mut child = Command::new("qemu-system-x86_64")
        .args(accel.qemu_args())
        .args(["-machine", "q35", "-m", &o.memory_mib.to_string()])
        .args(["-smp", &o.cpus.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        // No network device: nothing in the guest reaches anywhere.
        .args(["-nic", "none"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(o.image.join("vmlinuz"))
        .arg("-initrd")
        .arg(o.image.join("initrd.img"))
        .args([
            "-append",
            "root=/dev/vda rw console=ttyS0 panic=-1 init=/sbin/weft-vm-boot",
        ])
        // snapshot=on: the guest's writes go to a temporary file QEMU makes
        // (under TMPDIR, this run's folder); the cached image never changes.
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,snapshot=on",
            o.image.join("root.ext4").display()
        ))
        .arg("-virtfs")
        .arg(virtfs(&share, "weftrun"))
        .arg("-virtfs")
        .arg(virtfs(&o.src, "weftsrc"))
        .env("TMPDIR", &dir.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let _qemu = cleanup::register(Resource::Process(child.id() as i32));
    drop(making);

    let (tx, rx) = mpsc::channel::<String>();
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(|l| l.ok()) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let t0 = Instant::now();
    let mut console = Vec::new();
    let mut boot = None;
    let mut code = None;
    let stdout = std::io::stdout();
    loop {
        let bound = match boot {
            None => boot_within,
            Some(b) => b + o.run_within,
        };
        let left = bound.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if boot.is_none() {
                    if line.trim() == BOOTED {
                        boot = Some(t0.elapsed());
                    } else {
                        console.push(line);
                    }
                    continue;
                }
                if let Some(rc) = line.trim().strip_prefix(EXITED) {
                    code = rc.trim().parse::<i32>().ok();
                    continue;
                }
                // After the command: only the kernel's power-off messages.
                if code.is_some() {
                    continue;
                }
                let mut s = stdout.lock();
                let _ = writeln!(s, "{line}");
            }
            // QEMU ended: both pipes closed.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if boot.is_none() {
                    return Err(NoBoot(format!(
                        "the guest ({accel:?}) did not boot within {boot_within:?}; its console:\n{}",
                        console.join("\n")
                    ))
                    .into());
                }
                bail!(
                    "the command in the guest did not end within {:?}",
                    o.run_within
                );
            }
        }
    }
    let _ = child.wait();
    let Some(boot) = boot else {
        return Err(NoBoot(format!(
            "the guest ({accel:?}) stopped before it booted; its console:\n{}",
            console.join("\n")
        ))
        .into());
    };
    // The share's file is what the guest wrote before powering off; the
    // console marker is its echo.
    let code = std::fs::read_to_string(share.join("rc"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .or(code)
        .context("the guest powered off without the command's exit code")?;
    Ok(Outcome { code, accel, boot })
}

/// The newest test binary of `suite` (a file in `tests/`) among cargo's
/// outputs in `deps`: cargo names it `<suite>-<16 hex digits>`.
pub fn test_binary(deps: &Path, suite: &str) -> Result<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(deps).with_context(|| format!("reading {}", deps.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(hash) = name.strip_prefix(suite).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let meta = e.metadata()?;
        if !meta.is_file()
            || std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0
        {
            continue;
        }
        let t = meta.modified()?;
        if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, e.path()));
        }
    }
    best.map(|(_, p)| p).with_context(|| {
        format!(
            "no test binary for {suite} in {} (cargo test --no-run first)",
            deps.display()
        )
    })
}

/// A bash script that runs each `suite[:filter]` one after another in the
/// package's folder (as cargo test does), one test at a time, prints a line
/// per suite and exits 1 when any failed.
pub fn suites_script(pkg_dir: &Path, deps: &Path, suites: &[String]) -> Result<String> {
    let mut s = format!("cd '{}'\nfailed=()\n", pkg_dir.display());
    for spec in suites {
        let (suite, filter) = spec.split_once(':').unwrap_or((spec, ""));
        let bin = test_binary(deps, suite)?;
        let filters: Vec<String> = filter
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| format!("'{f}'"))
            .collect();
        s += &format!(
            "echo '=== {spec} (system datapath)'\n'{}' --test-threads=1 {} || failed+=('{spec}')\n",
            bin.display(),
            filters.join(" ")
        );
    }
    s += "if [ ${#failed[@]} -gt 0 ]; then echo \"=== failed: ${failed[*]}\"; exit 1; fi\necho '=== all passed'\n";
    Ok(s)
}
