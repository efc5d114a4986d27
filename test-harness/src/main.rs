//! `weft-harness`: the demo and the benchmarks.

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
    },
    /// Removes what killed harness runs left behind.
    Sweep,
}

fn main() -> Result<()> {
    weft_harness::cleanup::init();
    let result = match Cli::parse().cmd {
        Cmd::Demo => weft_harness::demo::run(),
        Cmd::Bench {
            runs,
            allocations,
            seconds,
            rounds,
            joins,
            hosts,
            per_host,
            overlay_only,
        } => {
            let single = if overlay_only {
                Ok(())
            } else {
                weft_harness::bench::run(runs, allocations)
            };
            single.and_then(|()| {
                weft_harness::bench_overlay::run(&weft_harness::bench_overlay::Options {
                    seconds,
                    rounds,
                    joins,
                    hosts,
                    per_host,
                })
            })
        }
        Cmd::Sweep => {
            weft_harness::cleanup::sweep_stale();
            Ok(())
        }
    };
    weft_harness::cleanup::yield_to_interrupt();
    result
}
