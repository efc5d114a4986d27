//! `weft-harness`: the demo and the benchmarks.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "weft's simulated hosts: demo and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Three simulated hosts, two networks: who reaches whom, a late host, clean-up.
    Demo,
    /// ADD/DEL latency of weft against the reference bridge plugin, side by side.
    Bench {
        /// ADD/DEL cycles per side.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Allocations per simulated node in the throughput figure.
        #[arg(long, default_value_t = 50)]
        allocations: usize,
    },
    /// Removes what killed harness runs left behind.
    Sweep,
}

fn main() -> Result<()> {
    weft_harness::cleanup::init();
    let result = match Cli::parse().cmd {
        Cmd::Demo => weft_harness::demo::run(),
        Cmd::Bench { runs, allocations } => weft_harness::bench::run(runs, allocations),
        Cmd::Sweep => {
            weft_harness::cleanup::sweep_stale();
            Ok(())
        }
    };
    weft_harness::cleanup::yield_to_interrupt();
    result
}
