//! A hostile or broken target during the connect sequence: a fake controller (a thread with a
//! plain socket) answers Keel's initiator with scripted bytes — nothing, malformed ICResps,
//! unknown PDU types, a termination request, data past what was asked, random bytes. Every
//! attach fails cleanly with an error, registers nothing and panics nowhere; the module stays
//! usable (the name is free again).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use keel_bdev::BdevRegistry;
use keel_nvme::opts::DEFAULT_HOSTNQN;
use keel_nvme::{AttachOpts, NvmeError, NvmeModule, TrType, TransportId};
use keel_nvme_proto::tcp::{C2HData, IcResp, PduHeader, SessionParams};
use keel_reactor::{CoreId, TestDriver};

fn icresp(maxh2cdata: u32) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    PduHeader::IcResp(IcResp {
        pfv: 0,
        cpda: 0,
        header_digest: false,
        data_digest: false,
        maxh2cdata,
    })
    .encode_pdu(&[], &SessionParams::INITIAL, &mut b)
    .unwrap();
    b
}

/// Serves one connection: reads the ICReq, sends `script`, reads what the host sends for a
/// moment and closes (a script that stops mid-PDU is a truncated stream).
fn fake(script: Vec<u8>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut icreq = [0u8; 128];
            if s.read_exact(&mut icreq).is_err() {
                return;
            }
            let _ = s.write_all(&script);
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    port
}

fn attach(d: &TestDriver, m: &Arc<NvmeModule>, port: u16) -> Result<Vec<String>, NvmeError> {
    let opts = AttachOpts {
        name: "Evil0".into(),
        trid: TransportId {
            trtype: TrType::Tcp,
            adrfam: "IPv4".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: port.to_string(),
            subnqn: "nqn.2016-06.io.keel:evil".into(),
        },
        hostnqn: DEFAULT_HOSTNQN.into(),
        hdgst: false,
        ddgst: false,
        num_io_queues: 1,
        io_queue_depth: 32,
        ctrlr_loss_timeout_sec: 0,
        reconnect_delay_sec: 0,
        fast_io_fail_timeout_sec: 0,
        keep_alive_timeout_ms: 0,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    d.enter(CoreId(0), || m.attach(opts, move |r| tx.send(r).unwrap()));
    let mut out = None;
    assert!(d.run_until(200_000_000, || {
        if let Ok(r) = rx.try_recv() {
            out = Some(r);
        }
        out.is_some()
    }));
    out.unwrap()
}

#[test]
fn malformed_controllers_fail_the_attach_cleanly() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    let m = NvmeModule::of(&reg);
    let c2h_past = {
        let mut b = icresp(65536);
        let mut p = vec![0u8; 64];
        let n = PduHeader::C2HData(C2HData {
            cccid: 0,
            datao: 4000,
            datal: 8,
            last_pdu: true,
            success: false,
        })
        .encode_pdu(&[1; 8], &SessionParams::INITIAL, &mut p)
        .unwrap();
        b.extend_from_slice(&p[..n]);
        b
    };
    let mut term = icresp(65536);
    term.extend_from_slice(&[
        0x03, 0, 24, 0, 24, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    let mut scripts: Vec<(&str, Vec<u8>)> = vec![
        ("closes at once", Vec::new()),
        ("ICResp with MAXH2CDATA 0", {
            let mut b = icresp(65536);
            b[12..16].copy_from_slice(&[0; 4]);
            b
        }),
        ("ICResp with a short PLEN", {
            let mut b = icresp(65536);
            b[4] = 64;
            b
        }),
        ("unknown PDU type", vec![0x55, 0, 8, 0, 8, 0, 0, 0]),
        (
            "a CapsuleResp instead of ICResp",
            vec![
                0x05, 0, 24, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        ("C2HData past the Connect's buffer", c2h_past),
        ("termination request after ICResp", term),
        ("ICResp then half a PDU and close", {
            let mut b = icresp(65536);
            b.extend_from_slice(&[0x05, 0, 24, 0]);
            b
        }),
    ];
    for i in 0..12 {
        let mut b = if i % 2 == 0 { icresp(65536) } else { Vec::new() };
        b.extend(random(64 + i * 40));
        scripts.push(("random bytes", b));
    }
    for (what, script) in scripts {
        let port = fake(script);
        let r = attach(&d, &m, port);
        assert!(r.is_err(), "{what}: attach succeeded: {r:?}");
        assert!(m.controllers().is_empty(), "{what}");
        assert!(reg.list().is_empty(), "{what}");
    }
}
