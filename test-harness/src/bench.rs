#![allow(clippy::print_stdout)]
//! ADD/DEL latency of weft against the reference bridge plugin, interleaved in
//! one run on one host so machine noise hits both sides alike. Times are what
//! a runtime sees: fork to exit of the plugin process.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::host::{Container, Host};
use crate::runtime::{weft_plugin, Attach, Network};

pub struct Stats {
    pub median: Duration,
    pub p95: Duration,
}

pub fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p95: at(0.95),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Side {
    name: &'static str,
    net: Network,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Side {
    fn cycle(&mut self, host: &Host, c: &Container, record: bool) -> Result<()> {
        let (added, add_time) = self.net.add_timed(host, c, "eth0", &Attach::default())?;
        let result = match added {
            Ok(r) => r,
            Err(out) => bail!("{} ADD failed: {}", self.name, out.stdout),
        };
        settle();
        let del = self
            .net
            .del(host, &c.id, Some(c.path()), "eth0", Some(&result))?;
        settle();
        if !del.success {
            bail!("{} DEL failed: {}", self.name, del.stdout);
        }
        if record {
            self.add.push(add_time);
            self.del.push(del.elapsed);
        }
        Ok(())
    }
}

/// Waits until every process a plugin left behind has exited (weft's DEL
/// leaves a child to sit out the kernel's RCU barrier), so deferred work of
/// one side never overlaps the next measurement. Needs [`become_subreaper`].
fn settle() {
    let me = std::process::id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        while let Ok(status) =
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        if plugin_leftovers(me) == 0 || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Our children other than the OVS daemons the harness runs.
fn plugin_leftovers(me: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
            let (head, tail) = stat.rsplit_once(')').unwrap_or_default();
            let ppid = tail
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
            let comm = head.split_once('(').map(|x| x.1).unwrap_or_default();
            ppid == Some(me) && comm != "ovsdb-server" && comm != "ovs-vswitchd"
        })
        .count()
}

/// Orphans of our plugins come to us instead of init, so [`settle`] can wait.
fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub fn reference_plugin(host: &Host, subnet: &str) -> Value {
    json!({"type": "bridge", "bridge": "cni-ref0", "isGateway": false, "ipMasq": false,
           "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": host.ipam_dir()}})
}

/// Runs `runs` interleaved ADD/DEL cycles per side and prints the table.
pub fn run(runs: usize) -> Result<()> {
    crate::require_root();
    become_subreaper()?;
    let host = Host::new("bench")?;
    let mut weft_conf = weft_plugin(&host, "10.90.0.0/16");
    weft_conf.as_object_mut().map(|m| m.remove("logLevel"));
    if let Ok(f) = std::env::var("WEFT_BENCH_LOG") {
        weft_conf["logFile"] = f.into();
        weft_conf["logLevel"] = "debug".into();
    }
    let mut sides = [
        Side {
            name: "weft + host-local",
            net: Network::new(
                json!({"cniVersion": "1.0.0", "name": "bw", "plugins": [weft_conf]}),
            )?,
            add: vec![],
            del: vec![],
        },
        Side {
            name: "bridge + host-local (reference)",
            net: Network::new(
                json!({"cniVersion": "1.0.0", "name": "br", "plugins": [reference_plugin(&host, "10.91.0.0/16")]}),
            )?,
            add: vec![],
            del: vec![],
        },
    ];
    let containers: Vec<Container> = (0..4)
        .map(|i| Container::new(&format!("bc{i}")))
        .collect::<Result<_>>()?;
    eprintln!("bench: {runs} ADD/DEL cycles per side, interleaved, after 3 warm-up cycles");
    for i in 0..runs + 3 {
        for side in sides.iter_mut() {
            side.cycle(&host, &containers[i % containers.len()], i >= 3)?;
        }
    }
    println!("| operation | weft median | weft p95 | reference median | reference p95 | ratio (median) |");
    println!("|---|---|---|---|---|---|");
    let [w, r] = &mut sides;
    for (op, ws, rs) in [
        ("ADD", &mut w.add, &mut r.add),
        ("DEL", &mut w.del, &mut r.del),
    ] {
        let (a, b) = (stats(ws), stats(rs));
        println!(
            "| {op} | {} | {} | {} | {} | {:.2}x |",
            ms(a.median),
            ms(a.p95),
            ms(b.median),
            ms(b.p95),
            a.median.as_secs_f64() / b.median.as_secs_f64()
        );
    }
    println!(
        "\nweft = {}; reference = {}; {runs} cycles each, interleaved, cniVersion 1.0.0.",
        w.name, r.name
    );
    println!("Time is fork-to-exit of the plugin process; between operations the harness waits for every process a plugin left behind.");
    Ok(())
}
