//! Bad NBD clients against keel-tgt, while a well-behaved client keeps writing and reading
//! through it on its own connection the whole time: a client that stalls in the negotiation
//! (dropped after 10 s), one that vanishes mid-negotiation, bad request magic (closed), an
//! unknown command, unknown flags, out-of-range, unaligned and oversized requests (the errno the
//! protocol names, the connection goes on), an oversized WRITE whose payload is drained and one
//! too large to drain (closed), a write to a read-only export (EPERM), a client vanishing in the
//! middle of a WRITE payload, and a client that pipelines reads and never reads the replies (it
//! is held off by its slots and byte budget: the target's memory stays bounded).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Target;
use keel_nbd::client::{encode_client_flags, encode_info_request, encode_option, BlockingClient};
use keel_nbd::consts::*;
use keel_nbd::RequestHeader;

/// A negotiated connection (structured replies) with a 10 s read timeout.
fn connect(tcp: &str, export: &str) -> BlockingClient<TcpStream> {
    let s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BlockingClient::connect(s, export, true).unwrap()
}

/// The good client's round: a write and a read-back of a fresh pattern.
fn good_round(c: &mut BlockingClient<TcpStream>, round: &mut u8) {
    *round = round.wrapping_add(1);
    let data = vec![*round; 8192];
    let off = u64::from(*round) * 8192;
    assert_eq!(c.write(off, &data, false).unwrap(), 0, "the good client's write");
    assert_eq!(c.read(off, 8192).unwrap(), Ok(data), "the good client's read");
}

fn header(flags: u16, command: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
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
    h.to_vec()
}

/// Whether the server closed `s` (EOF or reset) within 10 s.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn bad_clients_do_not_disturb_a_good_one() {
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "64", "4096"]);
    t.ok(&["bdev_malloc_create", "-b", "R0", "4", "512"]);
    let (tcp, _unix) = t.nbd_listen();
    t.plugin(&["nbd_server_add_export", "M0"]);
    t.plugin(&["nbd_server_add_export", "R0", "-r"]);
    let started = Instant::now();

    // A client that connects and never says anything.
    let mut staller = TcpStream::connect(&tcp).unwrap();
    let mut good = connect(&tcp, "M0");
    let mut round = 0u8;
    good_round(&mut good, &mut round);

    // Vanishing mid-negotiation: flags and half an option.
    {
        let mut s = TcpStream::connect(&tcp).unwrap();
        let mut out = Vec::new();
        encode_client_flags(&mut out, 3);
        encode_info_request(&mut out, OPT_GO, "M0", &[INFO_BLOCK_SIZE]);
        s.write_all(&out[..out.len() - 5]).unwrap();
    }
    // An option announcing 1 GiB of data: refused and closed before any of it is read.
    {
        let mut s = TcpStream::connect(&tcp).unwrap();
        let mut out = Vec::new();
        encode_client_flags(&mut out, 3);
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&OPT_INFO.to_be_bytes());
        out.extend_from_slice(&(1u32 << 30).to_be_bytes());
        s.write_all(&out).unwrap();
        assert!(closed(&mut s), "an over-long option closes the connection");
    }
    good_round(&mut good, &mut round);

    // Per-request errors on one connection that goes on.
    let mut c = connect(&tcp, "M0");
    let size = c.size_bytes;
    assert_eq!(size, 64 << 20);
    let expect = |c: &mut BlockingClient<TcpStream>, bytes: Vec<u8>, errno: u32, what: &str| {
        c.stream.write_all(&bytes).unwrap();
        let r = c.reply().unwrap();
        assert_eq!(r.error, errno, "{what}");
    };
    expect(&mut c, header(0, 42, 1, 0, 4096), 22, "unknown command");
    expect(&mut c, header(0x40, CMD_READ, 2, 0, 4096), 22, "unknown flag");
    expect(
        &mut c,
        header(CMD_FLAG_REQ_ONE, CMD_READ, 3, 0, 4096),
        22,
        "misplaced flag",
    );
    expect(&mut c, header(0, CMD_READ, 4, size, 4096), 22, "read past the end");
    expect(&mut c, header(0, CMD_READ, 5, 512, 4096), 22, "unaligned offset");
    expect(&mut c, header(0, CMD_READ, 6, 0, 1000), 22, "unaligned length");
    expect(&mut c, header(0, CMD_READ, 7, 0, 0), 22, "zero length");
    expect(
        &mut c,
        header(0, CMD_READ, 8, 0, (32 << 20) + 4096),
        22,
        "read over the maximum",
    );
    expect(&mut c, header(0, CMD_FLUSH, 9, 4096, 0), 22, "flush with an offset");
    expect(
        &mut c,
        header(0, CMD_BLOCK_STATUS, 10, 0, 4096),
        22,
        "block status without a context",
    );
    let mut w = header(0, CMD_WRITE, 11, size - 4096, 8192);
    w.extend(vec![0xee; 8192]);
    expect(&mut c, w, 28, "write past the end (payload drained)");
    let mut w = header(0, CMD_WRITE, 12, 0, (32 << 20) + 4096);
    w.extend(vec![0xee; (32 << 20) + 4096]);
    expect(&mut c, w, 22, "write over the maximum (payload drained)");
    // After all that the connection still serves.
    assert_eq!(c.write(4096 * 100, &[7; 4096], true).unwrap(), 0);
    assert_eq!(c.read(4096 * 100, 4096).unwrap(), Ok(vec![7; 4096]));
    // A write too large to drain: closed.
    c.stream.write_all(&header(0, CMD_WRITE, 13, 0, 0xffff_f000)).unwrap();
    assert!(closed(&mut c.stream), "an undrainable payload closes the connection");
    good_round(&mut good, &mut round);

    // Bad magic: the stream cannot be followed, the connection is closed.
    let mut c = connect(&tcp, "M0");
    let mut bad = header(0, CMD_READ, 1, 0, 4096);
    bad[0] ^= 0xff;
    c.stream.write_all(&bad).unwrap();
    assert!(closed(&mut c.stream), "bad magic closes the connection");

    // Read-only export: EPERM, the payload consumed.
    let mut c = connect(&tcp, "R0");
    assert_eq!(c.write(0, &[1; 4096], false).unwrap(), 1);
    c.send(CMD_FLAG_FUA, CMD_WRITE_ZEROES, 0, 4096, &[]).unwrap();
    assert_eq!(c.reply().unwrap().error, 1);
    assert_eq!(c.read(0, 4096).unwrap(), Ok(vec![0; 4096]));
    good_round(&mut good, &mut round);

    // Vanishing in the middle of a WRITE payload.
    {
        let mut c = connect(&tcp, "M0");
        let mut w = header(0, CMD_WRITE, 1, 0, 1 << 20);
        w.extend(vec![0x99; 300_000]);
        c.stream.write_all(&w).unwrap();
    }
    good_round(&mut good, &mut round);

    // A client that pipelines 1 MiB reads and never reads a reply.
    let pid = t.child.id();
    let rss_before = rss_kib(pid);
    let mut hog = connect(&tcp, "M0");
    hog.stream.set_nonblocking(true).unwrap();
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let req = header(0, CMD_READ, 1, 0, 1 << 20);
    let mut pending: &[u8] = &[];
    while Instant::now() < deadline && sent < 2000 {
        if pending.is_empty() {
            pending = &req;
        }
        match hog.stream.write(pending) {
            Ok(n) => {
                pending = &pending[n..];
                if pending.is_empty() {
                    sent += 1;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        if sent.is_multiple_of(50) {
            good_round(&mut good, &mut round);
        }
    }
    for _ in 0..20 {
        good_round(&mut good, &mut round);
    }
    let rss_after = rss_kib(pid);
    assert!(sent > 130, "the client got {sent} requests out");
    assert!(
        rss_after < rss_before + 200 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB for {sent} unread 1 MiB replies"
    );
    drop(hog);
    good_round(&mut good, &mut round);

    // The staller is dropped once 10 s passed since it connected.
    let wait = Duration::from_secs(11).saturating_sub(started.elapsed());
    std::thread::sleep(wait);
    let mut g = [0u8; 18];
    staller.read_exact(&mut g).unwrap();
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert!(closed(&mut staller), "a stalled negotiation is dropped");
    good_round(&mut good, &mut round);

    // An option the server does not know mid-negotiation is ERR_UNSUP and the client goes on.
    let mut s = TcpStream::connect(&tcp).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    let mut out = Vec::new();
    encode_client_flags(&mut out, 3);
    encode_option(&mut out, 99, b"x");
    s.write_all(&out).unwrap();
    let mut r = [0u8; 20];
    s.read_exact(&mut r).unwrap();
    assert_eq!(u32::from_be_bytes(r[12..16].try_into().unwrap()), REP_ERR_UNSUP);

    let exports = t.plugin(&["nbd_server_get_exports"]);
    let m0 = &exports[0];
    assert_eq!(m0["name"], "M0");
    assert_eq!(
        m0["connections"].as_array().unwrap().len(),
        1,
        "only the good client is left: {m0}"
    );
    good.disconnect().unwrap();
    assert!(t.stop().success());
}
