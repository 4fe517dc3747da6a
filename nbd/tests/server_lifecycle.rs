//! The server's connection life cycle on the deterministic driver, with in-process clients over
//! socketpairs: a bdev that hands requests back (`Submit::Requeue`) every other time is served
//! correctly (the connection retries); a client that stalls in the negotiation is dropped
//! after the configured timeout; removing an export with a client is EBUSY, forced it ends the
//! connection and releases the bdev (its hold goes, deletes work again); hot removal of an
//! exported bdev answers a request in flight and ends the connection; a connection started in
//! transmission (the kernel client's way) serves simple replies.

mod common;

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use common::pipe::Pipe;
use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::{
    BackendChannel, BdevBackend, BdevInfo, BdevParams, BdevRegistry, ChannelCx, ConfigCall, IoBox, IoCaps, IoOp,
    IoStatus, Submit,
};
use keel_nbd::client::BlockingClient;
use keel_nbd::consts::CMD_READ;
use keel_nbd::{ExportOpts, NbdServer, ServerConfig};
use keel_reactor::{CoreId, TestDriver};

/// A RAM disk that refuses every other request with `Requeue` (test code: a lock is fine).
struct Stubborn {
    data: Arc<Mutex<Vec<u8>>>,
}
struct StubbornChannel {
    data: Arc<Mutex<Vec<u8>>>,
    n: Cell<u64>,
}
impl BackendChannel for StubbornChannel {
    fn submit(&self, io: IoBox) -> Submit {
        self.n.set(self.n.get() + 1);
        if self.n.get() % 2 == 1 {
            return Submit::Requeue(io);
        }
        let at = io.offset_blocks as usize * 512;
        let len = io.num_blocks as usize * 512;
        let mut d = self.data.lock().unwrap();
        match io.op {
            IoOp::Read => {
                let v = &io.iovs[0];
                v.buf.bytes_mut()[v.offset_bytes as usize..][..len].copy_from_slice(&d[at..at + len]);
            }
            IoOp::Write => {
                let v = &io.iovs[0];
                d[at..at + len].copy_from_slice(&v.buf.bytes()[v.offset_bytes as usize..][..len]);
            }
            _ => {}
        }
        drop(d);
        io.complete(IoStatus::Success);
        Submit::Accepted
    }
}
impl BdevBackend for Stubborn {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(StubbornChannel {
            data: self.data.clone(),
            n: Cell::new(0),
        })
    }
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }
}

fn export(d: &TestDriver, server: &NbdServer, bdev: &str, name: &str) {
    d.enter(CoreId(0), || {
        server
            .add_export(&ExportOpts {
                bdev_name: bdev.into(),
                name: Some(name.into()),
                ..Default::default()
            })
            .unwrap()
    });
}

#[test]
fn requeued_requests_are_retried() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    reg.register(
        BdevParams {
            name: "S0".into(),
            uuid: None,
            product_name: "test",
            module: "test",
            block_size: 512,
            num_blocks: 256,
            caps: IoCaps::of(&[IoOp::Read, IoOp::Write]),
            optimal_io_boundary_blocks: 0,
        },
        Arc::new(Stubborn {
            data: Arc::new(Mutex::new(vec![0; 256 * 512])),
        }),
    )
    .unwrap();
    let server = NbdServer::of(&reg);
    export(&d, &server, "S0", "s");
    let mut c = BlockingClient::connect(Pipe::connect(&d, &server, true, ""), "s", true).unwrap();
    // Pipelined: several requests wait for their retry at once.
    for i in 0..16u64 {
        c.send(0, keel_nbd::consts::CMD_WRITE, i * 4096, 4096, &[i as u8 + 1; 4096])
            .unwrap();
    }
    for _ in 0..16 {
        assert_eq!(c.reply().unwrap().error, 0);
    }
    for i in 0..16u64 {
        assert_eq!(c.read(i * 4096, 4096).unwrap(), Ok(vec![i as u8 + 1; 4096]));
    }
    // A FLUSH on a bdev without flush is answered at once; FUA too.
    assert_eq!(c.flush().unwrap(), 0);
    assert_eq!(c.write(0, &[9; 512], true).unwrap(), 0);
}

#[test]
fn stalled_negotiations_are_dropped() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("M0", 64, 512)).unwrap();
    let server = NbdServer::of(&reg);
    server.set_config(ServerConfig {
        handshake_timeout_us: 20_000,
        ..ServerConfig::default()
    });
    export(&d, &server, "M0", "m");
    let mut p = Pipe::connect(&d, &server, true, "");
    let start = std::time::Instant::now();
    let out = p.read_until_closed(u64::MAX).unwrap();
    assert!(start.elapsed() >= std::time::Duration::from_millis(20));
    assert_eq!(out.len(), 18, "only the greeting before the drop");
}

#[test]
fn removal_forced_and_hot() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("M0", 64, 512)).unwrap();
    malloc::create(&reg, &MallocOpts::new("M1", 64, 512)).unwrap();
    let server = NbdServer::of(&reg);
    export(&d, &server, "M0", "a");
    export(&d, &server, "M1", "b");
    assert_eq!(reg.get("M0").unwrap().holders(), ["nbd export 'a'"]);
    assert!(malloc::delete(&reg, "M0", || {}).is_err());

    let mut c = BlockingClient::connect(Pipe::connect(&d, &server, true, ""), "a", true).unwrap();
    assert_eq!(c.write(0, &[1; 512], false).unwrap(), 0);
    let result = Arc::new(Mutex::new(None));
    let r2 = result.clone();
    server.remove_export("a", false, move |r| *r2.lock().unwrap() = Some(r));
    let e = result.lock().unwrap().take().unwrap().unwrap_err();
    assert_eq!(e.errno(), -16, "{e}");
    assert!(e.to_string().contains("pipe"), "names the peer: {e}");
    // Forced: the connection ends after its in-flight request, then the removal completes.
    c.send(0, CMD_READ, 0, 512, &[]).unwrap();
    let r2 = result.clone();
    server.remove_export("a", true, move |r| *r2.lock().unwrap() = Some(r));
    assert!(d.run_until(100_000, || result.lock().unwrap().is_some()));
    assert!(result.lock().unwrap().take().unwrap().is_ok());
    assert!(
        reg.get("M0").unwrap().holders().is_empty(),
        "the hold went with the export"
    );
    assert!(c.stream.read_until_closed(100_000).is_some());
    malloc::delete(&reg, "M0", || {}).unwrap();

    // Hot removal of an exported bdev: a request in flight is answered, the connection ends,
    // the export goes.
    let mut c = BlockingClient::connect(Pipe::connect(&d, &server, true, ""), "b", true).unwrap();
    assert_eq!(c.read(0, 512).unwrap(), Ok(vec![0; 512]));
    d.enter(CoreId(0), || reg.unregister("M1", || {}).unwrap());
    let r = c.read(0, 512);
    assert!(
        matches!(r, Ok(Err(108)) | Err(_)),
        "ESHUTDOWN or closed after hot removal: {r:?}"
    );
    assert!(d.run_until(100_000, || server.exports().is_empty()));
}

#[test]
fn transmission_without_negotiation_uses_simple_replies() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("M0", 64, 512)).unwrap();
    let server = NbdServer::of(&reg);
    export(&d, &server, "M0", "m");
    let p = Pipe::connect(&d, &server, false, "m");
    // No greeting: the first bytes are replies to requests, all simple.
    let mut c = BlockingClient::in_transmission(p);
    assert_eq!(c.write(512, &[3; 1024], true).unwrap(), 0);
    assert_eq!(c.read(512, 1024).unwrap(), Ok(vec![3; 1024]));
    assert_eq!(c.read(0, 100).unwrap(), Err(22), "unaligned");
    assert_eq!(c.flush().unwrap(), 0);
    assert_eq!(server.exports()[0].connections.len(), 1);
    let mut p = c.disconnect().unwrap();
    assert!(p.closed_within(100_000));
    assert!(d.run_until(10_000, || server.exports()[0].connections.is_empty()));
}
