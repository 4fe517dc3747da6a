//! Bad NVMe/TCP hosts against keel-tgt while a good host keeps writing and reading on its own
//! queue: commands before Connect, Connect to an unknown NQN, a wrong controller id, an I/O
//! queue beyond the controller's, out-of-range LBAs, a transfer over MDTS, an unknown
//! namespace, an unknown opcode, an SGL length that does not match the command (each answered
//! with the status the spec names, the queue going on); and malformed streams — a bad header
//! length, an unknown PDU type, a first PDU that is not ICReq, a header digest mismatch, H2CData
//! without an R2T, a stream cut in the middle of a capsule, in-capsule data over the queue's
//! in-capsule size (each ends that connection, with a
//! C2HTermReq where the spec has one). The target keeps serving the good host throughout.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::nvmf::*;
use keel_nvme_proto::cqe::{InvalidParameter, StatusCode};
use keel_nvme_proto::sqe::{Command, NvmCommand, Sqe};
use keel_nvme_proto::tcp::Fes;
use keel_nvmf::testhost::{Host, HostError, Received};

const H: &str = HOSTNQN;

struct Good {
    io: Host,
    _admin: Host,
    round: u8,
}

impl Good {
    fn new(addr: SocketAddr) -> Good {
        let a = admin_queue(addr, NQN, false, 0);
        let io = io_queue(addr, a.cntlid, false);
        Good {
            io,
            _admin: a,
            round: 0,
        }
    }

    fn round(&mut self) {
        self.round = self.round.wrapping_add(1);
        write_read(&mut self.io, 2048 + u64::from(self.round) * 16, 8192, self.round, false);
    }
}

fn status_of(h: &mut Host, sqe: Sqe, write: &[u8], read: &mut [u8]) -> StatusCode {
    let c = h.exec(sqe, write, read).unwrap();
    c.status.code
}

fn expect_term(h: &mut Host, fes: Option<Fes>) {
    match h.closed_within(Duration::from_secs(10)) {
        Some(Received::Term(t)) => {
            if let Some(f) = fes {
                assert_eq!(t.fes, f, "{t:?}");
            }
        }
        Some(Received::Closed) => assert!(fes.is_none(), "closed without the termination request {fes:?}"),
        other => panic!("connection not closed: {other:?}"),
    }
}

#[test]
fn bad_hosts_get_statuses_or_termination_and_the_good_host_goes_on() {
    let (t, addr) = setup();
    let mut good = Good::new(addr);
    good.round();

    // A command before Connect.
    let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
    let ka = Command::Admin(keel_nvme_proto::sqe::AdminCommand::KeepAlive);
    assert_eq!(
        h.command(&ka, &[], &mut []).unwrap().status.code,
        StatusCode::COMMAND_SEQUENCE_ERROR
    );
    // Connect to an unknown NQN: invalid parameter at SUBNQN (Connect data offset 256).
    let c = h.connect(0, "nqn.2016-06.io.spdk:nope", H, 0xFFFF, 0, 31, 0).unwrap();
    assert_eq!(c.status.code, StatusCode::CONNECT_INVALID_PARAMETERS);
    assert!(c.status.dnr);
    assert_eq!(
        InvalidParameter::from_dw0(c.dw0),
        InvalidParameter {
            in_data: true,
            offset: 256
        }
    );
    // An I/O queue for a controller that does not exist.
    let c = h.connect(1, NQN, H, 999, 0, 127, 8192).unwrap();
    assert_eq!(c.status.code, StatusCode::CONNECT_INVALID_PARAMETERS);
    // Admin SQSIZE 0.
    let c = h.connect(0, NQN, H, 0xFFFF, 0, 0, 0).unwrap();
    assert_eq!(c.status.code, StatusCode::CONNECT_INVALID_PARAMETERS);
    assert_eq!(InvalidParameter::from_dw0(c.dw0).offset, 44);
    drop(h);
    good.round();

    // I/O queue id beyond max_io_qpairs_per_ctrlr (127), and one connected twice.
    let a = admin_queue(addr, NQN, false, 0);
    let mut q = Host::new(addr, false, false, sleep_idle()).unwrap();
    assert_eq!(
        q.connect(200, NQN, H, a.cntlid, 0, 127, 8192).unwrap().status.code,
        StatusCode::CONNECT_INVALID_PARAMETERS
    );
    let mut io = io_queue(addr, a.cntlid, false);
    let mut twice = Host::new(addr, false, false, sleep_idle()).unwrap();
    assert_eq!(
        twice.connect(1, NQN, H, a.cntlid, 0, 127, 8192).unwrap().status.code,
        StatusCode::CONNECT_INVALID_PARAMETERS
    );

    // Command errors on a connected I/O queue; the queue goes on.
    let nvm = |c: NvmCommand| {
        Command::Nvm(c)
            .to_sqe(0, keel_nvme_proto::sqe::DataPointer::NONE_TCP)
            .unwrap()
    };
    let blocks = 65536u64;
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        status_of(
            &mut io,
            nvm(NvmCommand::Read(rw(1, blocks - 4, 8, false))),
            &[],
            &mut buf
        ),
        StatusCode::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        status_of(
            &mut io,
            nvm(NvmCommand::Read(rw(1, u64::MAX - 2, 8, false))),
            &[],
            &mut buf
        ),
        StatusCode::LBA_OUT_OF_RANGE
    );
    let mut big = vec![0u8; 256 << 10];
    assert_eq!(
        status_of(&mut io, nvm(NvmCommand::Read(rw(1, 0, 512, false))), &[], &mut big),
        StatusCode::INVALID_FIELD,
        "over MDTS"
    );
    assert_eq!(
        status_of(&mut io, nvm(NvmCommand::Read(rw(7, 0, 8, false))), &[], &mut buf),
        StatusCode::INVALID_NAMESPACE_OR_FORMAT
    );
    let mut unknown = Sqe::new(0x7E, 0);
    unknown.nsid = 1;
    assert_eq!(status_of(&mut io, unknown, &[], &mut []), StatusCode::INVALID_OPCODE);
    // A read whose SGL length is not the command's.
    assert_eq!(
        status_of(
            &mut io,
            nvm(NvmCommand::Read(rw(1, 0, 8, false))),
            &[],
            &mut [0u8; 1024]
        ),
        StatusCode::DATA_SGL_LENGTH_INVALID
    );
    write_read(&mut io, 0, 4096, 9, false);
    good.round();

    // Malformed streams, each on a fresh connection.
    // 1. A CapsuleCmd whose HLEN is wrong: FES 1 (invalid header field).
    let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
    let mut pdu = [0u8; 72];
    pdu[0] = 0x04;
    pdu[2] = 60;
    pdu[4..8].copy_from_slice(&72u32.to_le_bytes());
    h.send_raw(&pdu).unwrap();
    expect_term(&mut h, Some(Fes::INVALID_HEADER_FIELD));
    // 2. An unknown PDU type.
    let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
    h.send_raw(&[0x08, 0, 24, 0, 24, 0, 0, 0]).unwrap();
    h.send_raw(&[0u8; 16]).unwrap();
    expect_term(&mut h, Some(Fes::INVALID_HEADER_FIELD));
    // 3. A first PDU that is not ICReq: a sequence error.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut cap = [0u8; 72];
    cap[0] = 0x04;
    cap[2] = 72;
    cap[4..8].copy_from_slice(&72u32.to_le_bytes());
    s.write_all(&cap).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut resp = [0u8; 8];
    std::io::Read::read_exact(&mut s, &mut resp).unwrap();
    assert_eq!(resp[0], 0x03, "C2HTermReq");
    assert_eq!(
        u16::from_le_bytes([
            {
                let mut b = [0u8; 2];
                std::io::Read::read_exact(&mut s, &mut b).unwrap();
                b[0]
            },
            0
        ]),
        2
    );
    drop(s);
    // 4. A header digest mismatch (digests negotiated).
    let mut h = Host::new(addr, true, true, sleep_idle()).unwrap();
    let mut pdu = [0u8; 76];
    pdu[0] = 0x04;
    pdu[1] = 0x01;
    pdu[2] = 72;
    pdu[4..8].copy_from_slice(&76u32.to_le_bytes());
    pdu[72..76].copy_from_slice(&[1, 2, 3, 4]);
    h.send_raw(&pdu).unwrap();
    expect_term(&mut h, Some(Fes::HEADER_DIGEST_ERROR));
    // 5. H2CData for a transfer tag no R2T announced.
    let mut h = admin_queue(addr, NQN, false, 0);
    let mut d = vec![0u8; 24 + 512];
    d[0] = 0x06;
    d[1] = 0x04;
    d[2] = 24;
    d[3] = 24;
    d[4..8].copy_from_slice(&((24 + 512) as u32).to_le_bytes());
    d[10..12].copy_from_slice(&3u16.to_le_bytes());
    d[16..20].copy_from_slice(&512u32.to_le_bytes());
    h.send_raw(&d).unwrap();
    expect_term(&mut h, Some(Fes::INVALID_HEADER_FIELD));
    // 6. A stream cut in the middle of a capsule.
    let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
    h.send_raw(&cap[..40]).unwrap();
    drop(h);
    // 7. In-capsule data over the I/O queue's in-capsule size: FES 5 and close.
    let mut q2 = Host::new(addr, false, false, sleep_idle()).unwrap();
    assert!(q2
        .connect(2, NQN, H, a.cntlid, 0, 127, 8192)
        .unwrap()
        .status
        .is_success());
    q2.in_capsule_bytes = 1 << 20;
    let data = vec![5u8; 16384];
    match q2.exec(nvm(NvmCommand::Write(rw(1, 0, 32, false))), &data, &mut []) {
        Err(HostError::Closed(Received::Term(t))) => assert_eq!(t.fes, Fes::DATA_LIMIT_EXCEEDED),
        other => panic!("oversized in-capsule data was not terminated: {other:?}"),
    }
    good.round();

    // Everything still serves: the good host, a fresh controller, the RPC server.
    let fresh = admin_queue(addr, NQN, false, 0);
    let mut fio = io_queue(addr, fresh.cntlid, false);
    write_read(&mut fio, 4096, 65536, 77, true);
    good.round();
    assert!(t.json(&["nvmf_get_subsystems"]).as_array().unwrap().len() == 2);
    let _ = a.cntlid;
    drop(a);
    t.stop();
}

#[test]
fn hosts_outside_the_allow_list_are_refused() {
    let (t, addr) = setup();
    let nqn2 = "nqn.2016-06.io.spdk:cnode2";
    let port = addr.port().to_string();
    t.ok(&["bdev_malloc_create", "-b", "Malloc1", "8", "512"]);
    t.ok(&["nvmf_create_subsystem", nqn2]);
    t.ok(&["nvmf_subsystem_add_ns", nqn2, "Malloc1"]);
    listen(&t, nqn2, &port);
    let refused = |who: &str| {
        let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
        let c = h.connect(0, nqn2, who, 0xFFFF, 0, 31, 0).unwrap();
        (c.status.code, InvalidParameter::from_dw0(c.dw0))
    };
    assert_eq!(
        refused(H),
        (
            StatusCode::CONNECT_INVALID_HOST,
            InvalidParameter {
                in_data: true,
                offset: 512
            }
        )
    );
    t.ok(&["nvmf_subsystem_add_host", nqn2, H]);
    let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
    assert!(h.connect(0, nqn2, H, 0xFFFF, 0, 31, 0).unwrap().status.is_success());
    let other = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000002";
    assert_eq!(refused(other).0, StatusCode::CONNECT_INVALID_HOST);
    // Removing the host ends its association.
    t.ok(&["nvmf_subsystem_remove_host", nqn2, H]);
    assert!(h.closed_within(Duration::from_secs(10)).is_some());
    assert_eq!(refused(H).0, StatusCode::CONNECT_INVALID_HOST);
    t.ok(&["nvmf_subsystem_allow_any_host", nqn2, "--allow-any-host"]);
    let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
    assert!(h.connect(0, nqn2, other, 0xFFFF, 0, 31, 0).unwrap().status.is_success());
    // A subsystem reached through a port it does not listen on is refused.
    let port2 = free_port().to_string();
    listen(&t, NQN, &port2);
    let addr2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let mut h2 = Host::new(addr2, false, false, sleep_idle()).unwrap();
    assert_eq!(
        h2.connect(0, nqn2, other, 0xFFFF, 0, 31, 0).unwrap().status.code,
        StatusCode::CONNECT_INVALID_PARAMETERS
    );
    drop(h);
    t.stop();
}
