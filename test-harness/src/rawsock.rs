//! Raw Ethernet in a namespace: send an ARP request or any frame (802.1Q
//! tagged ones included), and count the copies that arrive elsewhere (the
//! broadcast test), the replies (the isolation tests), or the frames that
//! carry a unique payload (judging a probe at its receiver).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_8021Q: u16 = 0x8100;
/// IEEE's "local experimental" EtherType: nothing in the path parses it.
pub const ETH_P_PROBE: u16 = 0x88b5;

/// Runs `f` on a thread that has entered `ns`; sockets it opens stay there.
pub fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = ns.path.clone();
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on this thread only; the fd is valid for the call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    })
}

fn packet_socket_for(ifname: &str, proto: u16) -> Result<(OwnedFd, i32)> {
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto.to_be() as i32) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if index == 0 {
        bail!("no interface {ifname}");
    }
    // SAFETY: zeroed sockaddr_ll is valid; we fill the fields bind needs.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = index;
    // SAFETY: sll is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
    }
    Ok((fd, index))
}

/// An ARP request frame asking for `target` from `sender_ip`/`mac`.
pub fn arp_request(mac: [u8; 6], sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// Sends one broadcast ARP request for `target` out of `ifname` in `ns`.
pub fn send_arp(ns: &Netns, ifname: &str, sender_ip: [u8; 4], target: [u8; 4]) -> Result<()> {
    let mac = [0x02, 0x77, 0x65, 0x66, 0x74, 0x01];
    send_frames(ns, ifname, vec![arp_request(mac, sender_ip, target)])
}

/// A broadcast frame from `src` carrying `payload`, tagged with 802.1Q
/// VLAN `vlan` when given.
pub fn probe_frame(src: [u8; 6], vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + payload.len());
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&(v & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ETH_P_PROBE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Sends raw `frames` out of `ifname` in `ns`.
pub fn send_frames(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let ifname = ifname.to_string();
    in_netns(ns, move || {
        let (fd, _) = packet_socket_for(&ifname, ETH_P_ALL)?;
        for frame in frames {
            // SAFETY: frame is a valid buffer of the length passed.
            let n = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                )
            };
            if n != frame.len() as isize {
                bail!("send: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
}

/// Starts collecting, for `window`, every frame of any kind arriving on
/// `ifname` in `ns` that contains `marker`; join for the payloads seen
/// (from the marker on, up to 64 bytes).
pub fn collect_marked(
    ns: &Netns,
    ifname: &str,
    marker: &'static [u8],
    window: Duration,
) -> std::thread::JoinHandle<Result<Vec<String>>> {
    // What this namespace sent itself is not what it received.
    watch_frames(
        ns,
        ifname,
        ETH_P_ALL,
        window,
        true,
        Vec::new(),
        move |got, frame| {
            if let Some(at) = frame.windows(marker.len()).position(|w| w == marker) {
                let end = (at + 64).min(frame.len());
                let text: String = String::from_utf8_lossy(&frame[at..end])
                    .chars()
                    .take_while(|c| c.is_ascii_graphic())
                    .collect();
                got.push(text);
            }
        },
    )
}

/// Starts counting ARP requests for `target` arriving on `ifname` in `ns`
/// for `window`; join the handle for the count.
pub fn count_arp(
    ns: &Netns,
    ifname: &str,
    target: [u8; 4],
    window: Duration,
) -> std::thread::JoinHandle<Result<usize>> {
    count_frames(ns, ifname, window, move |f| {
        f.len() >= 42 && f[20..22] == [0, 1] && f[38..42] == target
    })
}

/// Starts counting ARP replies that say where `sender` is, arriving on
/// `ifname` in `ns` for `window`.
pub fn count_arp_replies(
    ns: &Netns,
    ifname: &str,
    sender: [u8; 4],
    window: Duration,
) -> std::thread::JoinHandle<Result<usize>> {
    count_frames(ns, ifname, window, move |f| {
        f.len() >= 42
            && f[12..14] == ETH_P_ARP.to_be_bytes()
            && f[20..22] == [0, 2]
            && f[28..32] == sender
    })
}

/// Counts the ARP frames on `ifname` in `ns` that `wanted` accepts, for
/// `window`; returns once the socket is listening.
fn count_frames(
    ns: &Netns,
    ifname: &str,
    window: Duration,
    wanted: impl Fn(&[u8]) -> bool + Send + 'static,
) -> std::thread::JoinHandle<Result<usize>> {
    watch_frames(ns, ifname, ETH_P_ARP, window, false, 0, move |n, f| {
        if wanted(f) {
            *n += 1;
        }
    })
}

/// Feeds every frame of `proto` on `ifname` in `ns` to `seen` for `window`
/// times [`crate::time_scale`] (without the ones this namespace sent, when `skip_outgoing`), on a
/// thread; returns once the socket is listening.
fn watch_frames<T: Send + 'static>(
    ns: &Netns,
    ifname: &str,
    proto: u16,
    window: Duration,
    skip_outgoing: bool,
    mut acc: T,
    mut seen: impl FnMut(&mut T, &[u8]) + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let ifname = ifname.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let (fd, _) = packet_socket_for(&ifname, proto)?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + window * crate::time_scale();
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
                continue;
            }
            // SAFETY: zeroed sockaddr_ll is valid for recvfrom to fill.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths passed.
            let len = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if len <= 0 || (skip_outgoing && from.sll_pkttype == libc::PACKET_OUTGOING) {
                continue;
            }
            seen(&mut acc, &buf[..len as usize]);
        }
        Ok(acc)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_frame_layout() {
        let f = arp_request([2, 0, 0, 0, 0, 1], [10, 0, 0, 1], [10, 0, 0, 9]);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[38..42], &[10, 0, 0, 9]);
    }

    #[test]
    fn probe_frames_carry_their_tag() {
        let f = probe_frame([2, 0, 0, 0, 0, 1], Some(4001), b"weft-x");
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x0f, 0xa1]);
        assert_eq!(&f[16..18], &ETH_P_PROBE.to_be_bytes());
        assert!(f.len() >= 60);
        let u = probe_frame([2, 0, 0, 0, 0, 1], None, b"weft-x");
        assert_eq!(&u[12..14], &ETH_P_PROBE.to_be_bytes());
    }
}
