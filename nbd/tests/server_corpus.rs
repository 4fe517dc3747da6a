//! The fuzz corpus (`fuzz/corpus/nbd_proto/`) replayed through the server's own connection
//! code, not only the sans-IO core: every input's client bytes go over a socketpair to a real
//! connection of an [`NbdServer`] exporting malloc bdevs (`disk`, 512-byte blocks, and `ro`,
//! read-only, 4 KiB blocks, as the fuzz catalog has them), whole and then cut into small
//! pieces. Whatever the bytes, the connection must end by itself once the client half-closes
//! (no hang, no panic), the server must forget it, and a well-behaved client must then be
//! served on the same server: write, FUA write, flush, read back.

mod common;

use std::io::Write;

use common::pipe::Pipe;
use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::BdevRegistry;
use keel_nbd::client::BlockingClient;
use keel_nbd::consts::{EXTENDED_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};
use keel_nbd::{ExportOpts, NbdServer};
use keel_reactor::{CoreId, TestDriver};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nbd_proto");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 20, "corpus too small");
    v
}

fn server(d: &TestDriver) -> (std::sync::Arc<BdevRegistry>, std::sync::Arc<NbdServer>) {
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("disk", 2048, 512)).unwrap();
    malloc::create(&reg, &MallocOpts::new("ro", 16, 4096)).unwrap();
    let server = NbdServer::of(&reg);
    d.enter(CoreId(0), || {
        server
            .add_export(&ExportOpts {
                bdev_name: "disk".into(),
                description: Some("a test disk".into()),
                ..Default::default()
            })
            .unwrap();
        server
            .add_export(&ExportOpts {
                bdev_name: "ro".into(),
                read_only: true,
                ..Default::default()
            })
            .unwrap();
    });
    (reg, server)
}

/// Sends `bytes` in pieces of `piece` bytes (the server may close early: later writes fail),
/// half-closes, checks the connection ends and returns what the server sent.
fn replay(d: &TestDriver, server: &NbdServer, name: &str, bytes: &[u8], piece: usize) -> Vec<u8> {
    let mut p = Pipe::connect(d, server, true, "");
    p.patience = 10_000;
    for chunk in bytes.chunks(piece.max(1)) {
        if p.write_all(chunk).is_err() {
            break;
        }
        d.turn();
    }
    p.s.shutdown(std::net::Shutdown::Write).unwrap();
    let out = p
        .read_until_closed(1_000_000)
        .unwrap_or_else(|| panic!("{name}: the connection did not end"));
    drop(p);
    assert!(
        d.run_until(10_000, || server.exports().iter().all(|e| e.connections.is_empty())),
        "{name}: the server still lists the connection"
    );
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn corpus_replays_through_server_connections() {
    let d = TestDriver::new(1);
    let (_reg, server) = server(&d);
    let mut reads = 0;
    for (name, input) in corpus() {
        let bytes = &input[1..];
        let whole = replay(&d, &server, &name, bytes, bytes.len());
        let split = replay(&d, &server, &name, bytes, 3);
        assert!(whole.starts_with(b"NBDMAGIC"), "{name}: greeting");
        assert!(split.starts_with(b"NBDMAGIC"), "{name}: greeting");
        if name == "nbdinfo_plain" || name == "qemu_extended" {
            // These negotiate and read: data replies came back through the connection.
            let magic = if name == "qemu_extended" {
                EXTENDED_REPLY_MAGIC
            } else {
                STRUCTURED_REPLY_MAGIC
            };
            assert!(contains(&whole, &magic.to_be_bytes()), "{name}: no data reply");
            reads += 1;
        }
    }
    assert_eq!(reads, 2, "the corpus has the seeds that reach transmission");
    // The server still serves.
    let p = Pipe::connect(&d, &server, true, "");
    let mut c = BlockingClient::connect(p, "disk", true).unwrap();
    assert_eq!(c.size_bytes, 1 << 20);
    assert_eq!(c.write(4096, &[0x5a; 8192], false).unwrap(), 0);
    assert_eq!(c.write(0, &[0xa5; 512], true).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    assert_eq!(c.read(0, 512).unwrap(), Ok(vec![0xa5; 512]));
    assert_eq!(c.read(4096, 8192).unwrap(), Ok(vec![0x5a; 8192]));
    let mut p = c.disconnect().unwrap();
    assert!(p.closed_within(100_000));
}
