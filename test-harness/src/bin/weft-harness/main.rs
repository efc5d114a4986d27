//! `weft-harness`: the demo, the benchmarks and the VM runner, over the
//! harness library the tests use.

mod bench;
mod bench_overlay;
mod demo;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "weft's simulated hosts: demo and benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Three simulated hosts, two networks: who reaches whom, a late host, clean-up.
    Demo,
    /// Every benchmark, each beside its reference: ADD/DEL latency and
    /// allocation throughput on one host, then the multi-host figures.
    Bench {
        /// ADD/DEL cycles per side.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Allocations per simulated node in the throughput figure.
        #[arg(long, default_value_t = 50)]
        allocations: usize,
        /// iperf3 seconds per cross-host measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Alternating rounds of cross-host TCP (overlay, then underlay).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Hosts joining one after another, for join convergence.
        #[arg(long, default_value_t = 30)]
        joins: usize,
        /// Hosts in the scale figure.
        #[arg(long, default_value_t = 12)]
        hosts: usize,
        /// Containers per host in the scale figure.
        #[arg(long, default_value_t = 8)]
        per_host: usize,
        /// Only the multi-host figures.
        #[arg(long)]
        overlay_only: bool,
        /// Only cross-host TCP (with --overlay-only: what the VM runs).
        #[arg(long)]
        throughput_only: bool,
    },
    /// Removes what killed harness runs left behind.
    Sweep,
    /// Runs a command as root in a QEMU guest with Debian 12's kernel (the
    /// openvswitch module), the checkout shared at the same path; exits
    /// with the command's exit code.
    Vm {
        /// Emulate (TCG) even where KVM works.
        #[arg(long)]
        tcg: bool,
        /// Seconds the guest may take to boot.
        #[arg(long, default_value_t = 180)]
        boot_within: u64,
        /// Seconds the command may run.
        #[arg(long, default_value_t = 3600)]
        run_within: u64,
        /// KEY=VALUE for the command's environment (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command (run by bash in the checkout).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Runs test suites (files in test-harness/tests, built by `cargo test
    /// --no-run`) in the guest of `vm`, on the kernel datapath:
    /// SUITE or SUITE:TEST,TEST (tests by name filter).
    VmTest {
        /// Emulate (TCG) even where KVM works.
        #[arg(long)]
        tcg: bool,
        #[arg(required = true)]
        suites: Vec<String>,
    },
}

fn main() -> Result<()> {
    weft_harness::cleanup::init();
    let result = match Cli::parse().cmd {
        Cmd::Demo => demo::run(),
        Cmd::Bench {
            runs,
            allocations,
            seconds,
            rounds,
            joins,
            hosts,
            per_host,
            overlay_only,
            throughput_only,
        } => {
            let single = if overlay_only {
                Ok(())
            } else {
                bench::run(runs, allocations)
            };
            single.and_then(|()| {
                bench_overlay::run(&bench_overlay::Options {
                    seconds,
                    rounds,
                    joins,
                    hosts,
                    per_host,
                    throughput_only,
                })
            })
        }
        Cmd::Vm {
            tcg,
            boot_within,
            run_within,
            env,
            cmd,
        } => {
            let code = vm(tcg, boot_within, run_within, env, &cmd);
            weft_harness::cleanup::yield_to_interrupt();
            std::process::exit(code);
        }
        Cmd::VmTest { tcg, suites } => {
            let code = match vm_test_script(&suites) {
                Ok(script) => vm(tcg, 180, 3600, vm_test_env(), &[script]),
                Err(e) => {
                    eprintln!("weft-harness vm-test: {e:#}");
                    125
                }
            };
            weft_harness::cleanup::yield_to_interrupt();
            std::process::exit(code);
        }
        Cmd::Sweep => {
            weft_harness::cleanup::sweep_stale();
            Ok(())
        }
    };
    weft_harness::cleanup::yield_to_interrupt();
    result
}

/// `weft-harness vm`: the command's exit code, or 125 when the guest could
/// not run it (the error says why).
fn vm(tcg: bool, boot_within: u64, run_within: u64, env: Vec<String>, cmd: &[String]) -> i32 {
    // What the run leaves is named by this pid (the runner's own tests look).
    eprintln!("weft-harness vm: pid {}", std::process::id());
    let go = || -> Result<i32> {
        let src = std::env::current_dir()?;
        let mut o = vm::Options::new(&src)?;
        o.env = env;
        o.boot_within = std::time::Duration::from_secs(boot_within);
        o.run_within = std::time::Duration::from_secs(run_within);
        if tcg {
            o.accel = Some(vm::Accel::Tcg);
        }
        let out = vm::run(&cmd.join(" "), &o)?;
        eprintln!(
            "weft-harness vm: exit code {} ({:?}, booted in {:.1?})",
            out.code, out.accel, out.boot
        );
        Ok(out.code)
    };
    match go() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft-harness vm: {e:#}");
            125
        }
    }
}

/// The test binaries sit beside the plugin binaries' folder, in deps/.
fn vm_test_script(suites: &[String]) -> Result<String> {
    let bin_dir = std::path::PathBuf::from(
        std::env::var_os("WEFT_BIN_DIR").unwrap_or_else(|| "target/release".into()),
    );
    let bin_dir = std::fs::canonicalize(&bin_dir)?;
    let pkg = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    vm::suites_script(pkg, &bin_dir.join("deps"), suites)
}

fn vm_test_env() -> Vec<String> {
    // Waiting bounds (not measurements) stretch for an emulated guest,
    // roughly 5-10x slower than this machine.
    let scale = std::env::var("WEFT_TIME_SCALE").unwrap_or_else(|_| "5".into());
    let mut env = vec![
        "RUST_BACKTRACE=1".to_string(),
        format!("WEFT_TIME_SCALE={scale}"),
    ];
    if let Some(b) = std::env::var_os("WEFT_BIN_DIR") {
        if let Ok(b) = std::fs::canonicalize(b) {
            env.push(format!("WEFT_BIN_DIR={}", b.display()));
        }
    }
    env
}
