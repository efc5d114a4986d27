//! Probes judged at the receiver: everything that reaches a namespace on
//! one port (UDP, TCP, ICMP echo that the IP stack accepted), and a sender
//! of all three carrying a payload that names the probe. Windows and
//! timeouts stretch with [`crate::time_scale`], for the emulated guest.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::netns::Netns;
use crate::rawsock;

pub const PORT: u16 = 9998;

/// Everything that reaches `ns` on PORT for `window`: UDP payloads, TCP
/// connections, and ICMP echo requests carrying "weft" (a raw socket sees
/// only what the IP stack accepted, after the firewall).
pub fn listen_all(ns: &Netns, window: Duration) -> std::thread::JoinHandle<Result<Vec<String>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = rawsock::in_netns(ns, move || {
        let udp = UdpSocket::bind(("0.0.0.0", PORT))?;
        udp.set_nonblocking(true)?;
        let tcp = TcpListener::bind(("0.0.0.0", PORT))?;
        tcp.set_nonblocking(true)?;
        // SAFETY: plain socket(2); owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                libc::IPPROTO_ICMP,
            )
        };
        anyhow::ensure!(raw >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: just returned by socket(2).
        let raw = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = ready_tx.send(());
        let deadline = Instant::now() + window * crate::time_scale();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                got.push(format!(
                    "udp {} from {from}",
                    String::from_utf8_lossy(&buf[..n]).trim()
                ));
            }
            if let Ok((mut s, from)) = tcp.accept() {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_millis(300)))?;
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut s, &mut text);
                // Where it arrived: the payload naming the destination may be
                // missing when the sender was stopped between connect and write.
                let to = s
                    .local_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                got.push(format!("tcp {} from {from} to {to}", text.trim()));
            }
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(raw.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 28 {
                let pkt = &buf[..n as usize];
                let ihl = usize::from(pkt[0] & 0x0f) * 4;
                if pkt.get(ihl) == Some(&8) {
                    if let Some(at) = pkt.windows(4).position(|w| w == b"weft") {
                        let tag: String = pkt[at..(at + 8).min(pkt.len())]
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        got.push(format!(
                            "icmp echo {tag} to {}.{}.{}.{}",
                            pkt[16], pkt[17], pkt[18], pkt[19]
                        ));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(got)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    h
}

/// UDP, TCP and ICMP to `dst` from `ns`, each carrying `id`.
pub fn probe(ns: &Netns, dst: &str, id: u8) {
    let msg = format!("weft-probe-{id}-{dst}");
    let scale = crate::time_scale();
    let _ = ns.exec(&["bash", "-c", &format!("echo {msg} > /dev/udp/{dst}/{PORT}")]);
    let _ = ns.exec(&[
        "timeout",
        &format!("{}", 0.5 * f64::from(scale)),
        "bash",
        "-c",
        &format!("echo {msg} > /dev/tcp/{dst}/{PORT}"),
    ]);
    // ping's pattern: "weft" then the id, so the receiver can tell probes apart.
    let _ = ns.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        &scale.to_string(),
        "-p",
        &format!("77656674{id:02x}"),
        dst,
    ]);
}
