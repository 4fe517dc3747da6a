//! Once a connection is up, serving NBD requests does not allocate: a counting global allocator
//! sees zero allocations while a client on the other end of a socketpair keeps 16 requests in
//! flight — 4 KiB and 64 KiB WRITEs (some with FUA), READs, a FLUSH, a TRIM — through the
//! server's real connection code on a malloc bdev, for thousands of rounds, with structured
//! replies (after a full negotiation) and with simple replies (a connection started in
//! transmission, as the kernel client's). The client's side uses only preallocated buffers.
//!
//! Everything runs in one #[test] on one thread (the reactor on the deterministic driver), so
//! nothing else allocates meanwhile.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::BdevRegistry;
use keel_nbd::client::{encode_client_flags, encode_info_request, encode_option};
use keel_nbd::consts::*;
use keel_nbd::server::sock::Stream;
use keel_nbd::{ExportOpts, NbdServer, RequestHeader};
use keel_reactor::{CoreId, TestDriver};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const QD: u64 = 16;
const WARMUP_ROUNDS: u64 = 100;
const MEASURED_ROUNDS: u64 = 800;

/// The client's end, driven on the reactor's thread: every wait turns the driver.
struct Client<'a> {
    d: &'a TestDriver,
    s: UnixStream,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Client<'_> {
    fn send_all(&mut self) {
        let mut at = 0;
        while at < self.out.len() {
            match self.s.write(&self.out[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.d.turn();
                }
                Err(e) => panic!("client write: {e}"),
            }
        }
        self.out.clear();
    }

    /// Reads `buf[from..len]`.
    fn read_from(&mut self, from: usize, len: usize) {
        let mut at = from;
        let mut idle = 0;
        while at < len {
            match self.s.read(&mut self.buf[at..len]) {
                Ok(0) => panic!("server closed"),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.d.turn();
                    idle += 1;
                    assert!(idle < 1_000_000, "no reply");
                }
                Err(e) => panic!("client read: {e}"),
            }
        }
    }

    fn read_exact(&mut self, len: usize) {
        self.read_from(0, len)
    }

    fn request(&mut self, flags: u16, command: u16, cookie: u64, offset: u64, len: u32, fill: u8) {
        let mut h = [0u8; 28];
        RequestHeader {
            flags,
            command,
            cookie,
            offset_bytes: offset,
            length: u64::from(len),
        }
        .encode(false, &mut h)
        .unwrap();
        self.out.extend_from_slice(&h);
        if command == CMD_WRITE {
            let start = self.out.len();
            self.out.resize(start + len as usize, fill);
        }
    }

    /// Reads one reply; returns (cookie, error, data bytes that followed).
    fn reply(&mut self, structured: bool, read_len: impl Fn(u64) -> usize) -> (u64, u32, usize) {
        self.read_exact(4);
        let magic = u32::from_be_bytes(self.buf[..4].try_into().unwrap());
        if magic == SIMPLE_REPLY_MAGIC {
            self.read_from(4, 16);
            let error = u32::from_be_bytes(self.buf[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(self.buf[8..16].try_into().unwrap());
            let n = if error == 0 { read_len(cookie) } else { 0 };
            if n > 0 {
                self.read_exact(n);
            }
            return (cookie, error, n);
        }
        assert!(structured && magic == STRUCTURED_REPLY_MAGIC, "magic {magic:#x}");
        self.read_from(4, 20);
        let flags = u16::from_be_bytes(self.buf[4..6].try_into().unwrap());
        let kind = u16::from_be_bytes(self.buf[6..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(self.buf[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(self.buf[16..20].try_into().unwrap()) as usize;
        assert_eq!((flags, kind), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA));
        self.read_exact(len);
        (cookie, 0, len - 8)
    }
}

/// Runs `rounds` rounds of `QD` mixed requests; returns the allocations they made.
fn rounds(c: &mut Client<'_>, structured: bool, rounds: u64, first: u64) -> u64 {
    let before = keel_testkit::allocations();
    for r in first..first + rounds {
        for i in 0..QD {
            let cookie = r * QD + i;
            let block = (cookie * 7919) % 1024;
            match i % 8 {
                0..=2 => c.request(0, CMD_READ, cookie, block * 4096, 4096, 0),
                3 => c.request(0, CMD_READ, cookie, block * 4096, 65536, 0),
                4 => c.request(0, CMD_WRITE, cookie, block * 4096, 4096, cookie as u8),
                5 => c.request(CMD_FLAG_FUA, CMD_WRITE, cookie, block * 4096, 65536, 3),
                6 if r % 4 == 0 => c.request(0, CMD_FLUSH, cookie, 0, 0, 0),
                6 => c.request(0, CMD_TRIM, cookie, block * 4096, 8192, 0),
                _ => c.request(0, CMD_WRITE, cookie, block * 4096, 8192, 9),
            }
        }
        c.send_all();
        for _ in 0..QD {
            let (cookie, error, n) = c.reply(structured, |cookie| match cookie % QD % 8 {
                0..=2 => 4096,
                3 => 65536,
                _ => 0,
            });
            assert_eq!(error, 0, "cookie {cookie}");
            let want = match cookie % QD % 8 {
                0..=2 => 4096,
                3 => 65536,
                _ => 0,
            };
            assert_eq!(n, want, "cookie {cookie}");
        }
    }
    keel_testkit::allocations() - before
}

fn steady_state(structured: bool) -> u64 {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("M0", 4096, 4096)).unwrap();
    let server = NbdServer::of(&reg);
    let (client, server_end) = UnixStream::pair().unwrap();
    client.set_nonblocking(true).unwrap();
    d.enter(CoreId(0), || {
        server
            .add_export(&ExportOpts {
                bdev_name: "M0".into(),
                ..Default::default()
            })
            .unwrap();
        if structured {
            server.serve(Stream::Unix(server_end), "test", CoreId(0)).unwrap();
        } else {
            server
                .serve_transmission(Stream::Unix(server_end), "M0", "test", CoreId(0))
                .unwrap();
        }
    });
    let mut c = Client {
        d: &d,
        s: client,
        out: Vec::with_capacity(64 << 20),
        buf: vec![0u8; 1 << 20],
    };
    if structured {
        c.read_exact(18);
        let mut hs = Vec::new();
        encode_client_flags(&mut hs, 3);
        encode_option(&mut hs, OPT_STRUCTURED_REPLY, &[]);
        encode_info_request(&mut hs, OPT_GO, "M0", &[INFO_BLOCK_SIZE]);
        c.out.extend_from_slice(&hs);
        c.send_all();
        // STRUCTURED_REPLY's ACK, GO's INFO_EXPORT + INFO_BLOCK_SIZE + ACK.
        for len in [0, 12, 14, 0] {
            c.read_exact(20 + len);
        }
    }
    // The warm-up builds the connection and fills the reactor's buffer pool.
    rounds(&mut c, structured, WARMUP_ROUNDS, 0);
    let n = rounds(&mut c, structured, MEASURED_ROUNDS, WARMUP_ROUNDS);
    drop(c);
    d.run_until(10_000, || server.exports()[0].connections.is_empty());
    n
}

#[test]
fn serving_requests_does_not_allocate() {
    let base = keel_testkit::allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(keel_testkit::allocations() > base, "the counter sees allocations");
    assert_eq!(steady_state(true), 0, "structured replies after a negotiation");
    assert_eq!(steady_state(false), 0, "simple replies, started in transmission");
}
