#![allow(clippy::print_stdout)]
//! ADD/DEL latency of weft (with host-local and with weft-ipam on etcd)
//! against the reference bridge plugin, interleaved in one run on one host so
//! machine noise hits every side alike; then allocation throughput. Times are
//! what a runtime sees: fork to exit of the plugin process.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use weft_harness::etcd::Etcd;
use weft_harness::fabric::Fabric;
use weft_harness::host::{Container, Host};
use weft_harness::runtime::{weft_ipam_conf, weft_plugin, Attach, Network};

pub struct Stats {
    pub median: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Nearest-rank quantiles; `samples` must not be empty.
pub fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

pub fn ms(d: Duration) -> String {
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

/// Our children other than the daemons the harness runs (OVS, etcd).
fn plugin_leftovers(me: i32) -> usize {
    let ours = weft_harness::cleanup::registered_pids();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<i32>()
                .ok()?;
            Some((pid, ppid))
        })
        .filter(|(pid, ppid)| *ppid == me && !ours.contains(pid))
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

fn side(name: &'static str, plugin: Value, network: &str) -> Result<Side> {
    let net = Network::new(json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin]}))?;
    Ok(Side {
        name,
        net,
        add: vec![],
        del: vec![],
    })
}

/// Runs `runs` interleaved ADD/DEL cycles per side and prints the tables:
/// latency against the reference, then allocation throughput.
pub fn run(runs: usize, allocations: usize) -> Result<()> {
    weft_harness::require_root();
    become_subreaper()?;
    let fabric = Fabric::new("bench")?;
    let etcd = Etcd::start(&fabric.netns, 1, None)?;
    let host = Host::new("bench")?;
    fabric.attach(&host.netns)?;

    let log = std::env::var("WEFT_BENCH_LOG").ok();
    let quiet = |mut conf: Value| {
        conf.as_object_mut().map(|m| m.remove("logLevel"));
        if let Some(f) = &log {
            conf["logFile"] = f.clone().into();
            conf["logLevel"] = "debug".into();
        }
        conf
    };
    let with_host_local = quiet(weft_plugin(&host, "10.90.0.0/16"));
    let mut with_weft_ipam = quiet(weft_plugin(&host, "10.92.0.0/16"));
    with_weft_ipam["ipam"] = weft_ipam_conf(&host, "10.92.0.0/16", &etcd.endpoints());
    let mut sides = [
        side("weft + host-local", with_host_local, "bw")?,
        side("weft + weft-ipam (etcd)", with_weft_ipam, "be")?,
        side(
            "bridge + host-local (reference)",
            reference_plugin(&host, "10.91.0.0/16"),
            "br",
        )?,
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
    println!("| operation | plugins | median | p95 | ratio to reference (median) |");
    println!("|---|---|---|---|---|");
    let reference = (
        stats(&mut sides[2].add.clone()).median,
        stats(&mut sides[2].del.clone()).median,
    );
    for op in ["ADD", "DEL"] {
        for side in sides.iter_mut() {
            let (samples, base) = if op == "ADD" {
                (&mut side.add, reference.0)
            } else {
                (&mut side.del, reference.1)
            };
            let st = stats(samples);
            let ratio = st.median.as_secs_f64() / base.as_secs_f64();
            println!(
                "| {op} | {} | {} | {} | {ratio:.2}x |",
                side.name,
                ms(st.median),
                ms(st.p95)
            );
        }
    }
    println!("\n{runs} cycles per side, interleaved, cniVersion 1.0.0; time is fork-to-exit of the first plugin of the chain.");
    println!("Between operations the harness waits for every process a plugin left behind.\n");

    throughput(&fabric, &etcd, allocations)
}

/// Allocations per second from 8 simulated nodes at once, each allocating one
/// address after another, with weft-ipam against one etcd and, beside it,
/// host-local doing the same work with no coordination at all.
fn throughput(fabric: &Fabric, etcd: &Etcd, per_node: usize) -> Result<()> {
    let nodes = 8;
    let log = etcd.dir.path.join("throughput.log");
    let bin_ipam = weft_harness::runtime::plugin_bin("weft-ipam")?;
    let bin_local = weft_harness::runtime::plugin_bin("host-local")?;
    let run_side =
        |bin: &std::path::Path, conf_for: &dyn Fn(usize) -> Value| -> Result<(Duration, usize)> {
            let started = std::time::Instant::now();
            let failures = std::thread::scope(|s| {
                let workers: Vec<_> = (0..nodes)
                    .map(|n| {
                        let conf = conf_for(n);
                        s.spawn(move || -> usize {
                            let mut failed = 0;
                            for c in 0..per_node {
                                let call = weft_harness::runtime::Call {
                                    command: "ADD",
                                    container_id: &format!("n{n}-c{c}"),
                                    netns: Some(std::path::Path::new("/proc/self/ns/net")),
                                    ifname: "eth0",
                                    args: None,
                                };
                                let ok = weft_harness::runtime::exec_raw(
                                    &fabric.netns,
                                    bin,
                                    &call.env(),
                                    conf.to_string().as_bytes(),
                                )
                                .map(|o| o.success)
                                .unwrap_or(false);
                                failed += usize::from(!ok);
                            }
                            failed
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or(per_node))
                    .sum::<usize>()
            });
            Ok((started.elapsed(), failures))
        };
    let ipam_conf = |n: usize| {
        json!({"cniVersion": "1.0.0", "name": "tput", "type": "weft-ipam",
               "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.110.0.0/16"}]], "nodeName": format!("n{n}"),
                        "dataDir": etcd.dir.path.join("hints"), "logFile": log, "logLevel": "debug",
                        "etcd": {"endpoints": etcd.endpoints(), "timeoutMs": 2000}}})
    };
    let local_conf = |n: usize| {
        json!({"cniVersion": "1.0.0", "name": "tput-local", "type": "host-local",
               "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{}.0.0/16", 120 + n)}]],
                        "dataDir": etcd.dir.path.join(format!("host-local-{n}"))}})
    };
    let (t_ipam, f_ipam) = run_side(&bin_ipam, &ipam_conf)?;
    let (t_local, f_local) = run_side(&bin_local, &local_conf)?;
    let trips: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("allocated"))
        .filter_map(|l| {
            l.split("round_trips=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let total = nodes * per_node;
    let rate = |t: Duration, failed: usize| (total - failed) as f64 / t.as_secs_f64();
    let avg_trips = trips.iter().sum::<u64>() as f64 / trips.len().max(1) as f64;
    println!("| allocation throughput, {nodes} nodes at once, {per_node} each | allocations/s | failed | etcd round trips per allocation |");
    println!("|---|---|---|---|");
    println!("| weft-ipam, one etcd, one cluster-wide plan | {:.0} | {f_ipam} | {avg_trips:.2} (max {}) |", rate(t_ipam, f_ipam), trips.iter().max().unwrap_or(&0));
    println!(
        "| host-local, one plan per node (reference, no coordination) | {:.0} | {f_local} | - |\n",
        rate(t_local, f_local)
    );
    Ok(())
}
