//! `weftctl`: weft's admin CLI, and `weftctl agent`, the optional host
//! daemon that keeps tunnels in step with the registry.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

mod agent;
mod conf;
mod doctor;
mod inspect;
mod install;
mod repair;
mod table;
mod upkeep;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "weft's admin CLI and host agent", version)]
struct Cli {
    /// The weft conflist this host's runtime uses; etcd, OVS and the bridge
    /// are read from it.
    #[arg(long, global = true, default_value = "/etc/cni/net.d/10-weft.conflist")]
    conf: PathBuf,
    /// JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hosts in the registry: underlay address, whether an agent holds them, networks.
    Nodes,
    /// Networks in the registry: VNI, tunnel type, hosts with containers.
    Networks,
    /// A network's address blocks and allocations (default: the conflist's network).
    Ips { network: Option<String> },
    /// This host's tunnel ports.
    Tunnels,
    /// weft-ipam upkeep on this host.
    Ipam {
        #[command(subcommand)]
        cmd: IpamCmd,
    },
    /// Collects ports of vanished containers here, and addresses of hosts
    /// that have been gone longer than the grace period.
    Gc {
        /// How long a host must have been missing (no registration, no word
        /// from its agent) before its addresses are released.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        node_grace: std::time::Duration,
        /// Release this host's addresses now, whatever the grace period
        /// (refused while it is registered); may be repeated.
        #[arg(long)]
        forget_node: Vec<String>,
    },
    /// Checks OVS, etcd, the datapath, MTU, registration and tunnels; says what to fix.
    Doctor,
    /// Removes everything weft made on this host, and its registration.
    Cleanup {
        /// Keep this host's registration, memberships and addresses in etcd.
        #[arg(long)]
        keep_registration: bool,
    },
    /// Keeps this host registered (with a lease) and its tunnels in step; runs until stopped.
    Agent {
        /// Lease TTL in seconds: how long peers keep tunnels to a host that died.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(2..=300))]
        ttl: i64,
        /// How long one of this host's reservations must have had no live
        /// attachment (no OVS port, its namespace gone) before the agent
        /// releases it.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        orphan_grace: std::time::Duration,
        /// How long one of this host's address blocks must have held no
        /// reservation before the agent gives it back to the pool.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        block_grace: std::time::Duration,
    },
    /// Installs weft, weft-ipam and weftctl (and conflists) atomically: the
    /// DaemonSet's install step, and the host install. Reads no --conf.
    Install {
        /// Where the binaries are taken from (default: weftctl's own folder).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Where the runtime looks for CNI plugins (Debian's own plugins live in /usr/lib/cni).
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// Where the runtime reads network configs.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// A conflist to check and install into --conf-dir; may be repeated.
        #[arg(long)]
        conflist: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IpamCmd {
    /// Puts back the reservations of this host's live attachments that etcd
    /// lacks (after a wipe or a restore), from the ports and their
    /// namespaces; exits 1 when an address is held by another attachment.
    Repair,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if matches!(cli.cmd, Cmd::Agent { .. }) {
        Some("info")
    } else {
        Some("warn")
    };
    weft_cni::logging::init(None, level);
    if let Cmd::Install {
        from,
        bin_dir,
        conf_dir,
        conflist,
    } = &cli.cmd
    {
        return match install::run(from.as_deref(), bin_dir, conf_dir, conflist) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weftctl install: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let outcome = conf::load(&cli.conf).and_then(|l| match &cli.cmd {
        Cmd::Nodes => inspect::nodes(&l, cli.json).map(|_| true),
        Cmd::Networks => inspect::networks(&l, cli.json).map(|_| true),
        Cmd::Ips { network } => inspect::ips(&l, network.as_deref(), cli.json).map(|_| true),
        Cmd::Tunnels => inspect::tunnels(&l, cli.json).map(|_| true),
        Cmd::Ipam {
            cmd: IpamCmd::Repair,
        } => repair::cli(&l, cli.json),
        Cmd::Gc {
            node_grace,
            forget_node,
        } => upkeep::gc(&l, *node_grace, forget_node, cli.json),
        Cmd::Doctor => doctor::run(&l, cli.json),
        Cmd::Cleanup { keep_registration } => {
            upkeep::cleanup(&l, *keep_registration, cli.json).map(|_| true)
        }
        Cmd::Agent {
            ttl,
            orphan_grace,
            block_grace,
        } => agent::run(
            &l,
            *ttl,
            agent::Graces {
                orphan: *orphan_grace,
                block: *block_grace,
            },
        )
        .map(|_| true),
        Cmd::Install { .. } => unreachable!("answered before the conflist is read"),
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weftctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
