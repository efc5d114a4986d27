#![allow(clippy::unwrap_used, clippy::panic)]
//! Runs a few ADD/DEL cycles with debug logs, to see where time goes.
use weft_harness::runtime::weft_network;
use weft_harness::{Attach, Container, Host};
fn main() {
    weft_harness::cleanup::init();
    let host = Host::new("ph").unwrap();
    let mut net = weft_network(&host, "ph", "1.0.0", "10.99.0.0/24");
    net.conflist["plugins"][0]["logFile"] = "/tmp/weft-phases.log".into();
    let c = Container::new("phc").unwrap();
    for _ in 0..4 {
        let (r, t) = net
            .add_timed(&host, &c, "eth0", &Attach::default())
            .unwrap();
        let r = r.unwrap();
        let d = net
            .del(&host, &c.id, Some(c.path()), "eth0", Some(&r))
            .unwrap();
        eprintln!("ADD {:?} DEL {:?}", t, d.elapsed);
    }
}
