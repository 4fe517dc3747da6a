//! The committed `nvme_tcp_pdu` fuzz corpus (and mutations of it) thrown at real target
//! connections: each input is a host's byte stream — after a real ICReq with the digests its
//! first byte asks for, when its "established" bit is set — sent to the target's listener on
//! the deterministic driver's reactor, then the host half-closes and reads until the target
//! closes (within 2 s: a connection whose host reads must not linger). No input may panic the target or leave the connection hanging; afterwards a good
//! host connects and does verified I/O, and no controller or qpair is left behind.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::BdevRegistry;
use keel_nvme_proto::fuzz::config;
use keel_nvme_proto::sqe::{Command, NvmCommand, ReadWrite};
use keel_nvme_proto::tcp::{IcReq, PduHeader, Role, SessionParams};
use keel_nvmf::testhost::Host;
use keel_nvmf::{ListenAddress, NsOpts, NvmfTarget, SubsystemOpts, TransportOpts};
use keel_reactor::{CoreId, TestDriver};

const NQN: &str = "nqn.2016-06.io.keel:corpus";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000cc";

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nvme_tcp_pdu");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 20, "corpus too small");
    v.into_iter().map(|(_, b)| b).collect()
}

/// Sends one input and waits until the target closes the connection.
fn throw(d: &TestDriver, addr: SocketAddr, input: &[u8]) {
    let [first, _seed, stream @ ..] = input else { return };
    let (role, params, established) = config(*first);
    if role != Role::Controller {
        return;
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    if established {
        let mut ic = [0u8; 128];
        PduHeader::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            maxr2t_0based: 0,
        })
        .encode_pdu(&[], &SessionParams::INITIAL, &mut ic)
        .unwrap();
        out.extend_from_slice(&ic);
    }
    out.extend_from_slice(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut at = 0;
    let mut buf = [0u8; 65536];
    while at < out.len() {
        match s.write(&out[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                d.turn();
            }
            Err(_) => break,
        }
        // Keep reading so the target's replies never block it.
        let _ = s.read(&mut buf);
        assert!(Instant::now() < deadline, "the target does not take the input");
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Well under the 5 s a closing qpair lingers for a host that does not read.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                d.turn();
            }
            Err(_) => break,
        }
        assert!(Instant::now() < deadline, "the target did not close the connection");
    }
}

/// A deterministic mutation of `input` (xorshift over the seed).
fn mutate(input: &[u8], seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = input.to_vec();
    if v.len() < 3 {
        return v;
    }
    v[0] &= !1; // controller side
    for _ in 0..(1 + next() % 4) {
        let i = 2 + (next() as usize) % (v.len() - 2);
        v[i] = next() as u8;
    }
    if next() % 4 == 0 {
        let cut = 2 + (next() as usize) % (v.len() - 2);
        v.truncate(cut);
    }
    v
}

#[test]
fn corpus_streams_never_hurt_the_target() {
    let d: &'static TestDriver = Box::leak(Box::new(TestDriver::new(1)));
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("M0", 2048, 512)).unwrap();
    let target = NvmfTarget::of(&reg);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    d.enter(CoreId(0), || {
        target.create_transport(TransportOpts::default()).unwrap();
        let opts = SubsystemOpts {
            allow_any_host: true,
            ..SubsystemOpts::default()
        };
        target.create_subsystem(NQN, opts).unwrap();
        let ns = NsOpts {
            bdev_name: "M0".into(),
            ..NsOpts::default()
        };
        target.add_ns(NQN, &ns).unwrap();
        let l = ListenAddress::parse("tcp", None, "127.0.0.1", Some(&port.to_string())).unwrap();
        target.add_listener(NQN, l).unwrap();
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let inputs = corpus();
    for input in &inputs {
        throw(d, addr, input);
    }
    for (i, input) in inputs.iter().enumerate() {
        for k in 0..32u64 {
            throw(d, addr, &mutate(input, (i as u64) << 8 | k));
        }
    }
    // Everything is cleaned up and a good host is served.
    assert!(d.run_until(100_000, || target
        .qpairs_json(NQN)
        .is_ok_and(|v| v.as_array().is_some_and(|a| a.is_empty()))));
    let turn = move || {
        d.turn();
    };
    let mut a = Host::new(addr, true, true, Box::new(turn)).unwrap();
    assert!(a.connect(0, NQN, HOST, 0xFFFF, 0, 31, 0).unwrap().status.is_success());
    let mut io = Host::new(addr, true, true, Box::new(turn)).unwrap();
    assert!(io
        .connect(1, NQN, HOST, a.cntlid, 0, 31, 4096)
        .unwrap()
        .status
        .is_success());
    let data: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
    let rw = ReadWrite {
        nsid: 1,
        slba: 8,
        nlb_0based: 15,
        fua: false,
        limited_retry: false,
    };
    assert!(io
        .command(&Command::Nvm(NvmCommand::Write(rw)), &data, &mut [])
        .unwrap()
        .status
        .is_success());
    let mut back = vec![0u8; 8192];
    assert!(io
        .command(&Command::Nvm(NvmCommand::Read(rw)), &[], &mut back)
        .unwrap()
        .status
        .is_success());
    assert_eq!(back, data);
}
