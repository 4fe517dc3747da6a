//! Attach to the in-process controller, identify it, and move data through one I/O queue pair:
//! write+read verify at 4 KiB and 128 KiB (PRP1, PRP2, PRP list), FUA, flush, write zeroes and
//! deallocate reading back zeroes, errors the controller returns, then the shutdown
//! notification.

mod common;

use keel_nvme_pcie::model::ModelConfig;
use keel_nvme_pcie::{Completion, ControllerOpts, CtrlrState, IoCommand, QueuePair, Submitted};
use keel_nvme_proto::cqe::StatusCode;

fn run<R: keel_nvme_pcie::Registers>(qp: &mut QueuePair<R, u32>, cmd: IoCommand, tag: u32) -> Completion {
    match qp.submit(&cmd, tag) {
        Submitted::Accepted => {}
        other => panic!("submit: {other:?}"),
    }
    let mut got = None;
    for _ in 0..1000 {
        qp.poll(8, |t, c| {
            assert_eq!(t, tag);
            got = Some(c)
        });
        if got.is_some() {
            break;
        }
    }
    got.expect("a completion")
}

#[test]
fn identify_write_read_zeroes_and_shutdown() {
    let mut r = common::rig(ModelConfig::default(), ControllerOpts::default());
    let id = r.ctrlr.identity();
    assert_eq!(id.vid, 0x1B36);
    assert_eq!(id.sn.as_str().map(str::trim), Some("KEELMODEL0"));
    assert_eq!(id.mdts, 7);
    assert_eq!(r.ctrlr.max_transfer_bytes(), 512 * 1024);
    let ns = r.ctrlr.namespaces()[0];
    assert_eq!((ns.nsid, ns.block_size, ns.blocks), (1, 512, 32 * 1024));
    assert_eq!(r.ctrlr.io_queues_granted(), 4);

    let mut qp: QueuePair<_, u32> = r.ctrlr.create_io_qpair().unwrap();
    assert_eq!(r.model.io_sq_count(), 1);
    let buf = r.pool.get().unwrap();
    for (len, slba, seed) in [(4096u32, 8u64, 1u8), (128 * 1024, 100, 2), (4096 + 512, 1000, 3)] {
        let p = common::pattern(seed, len as usize);
        r.pool.write(&buf, 0, &p).unwrap();
        let blocks = len / 512;
        let c = run(
            &mut qp,
            IoCommand::Write {
                nsid: 1,
                slba,
                blocks,
                buf: common::data(&buf, len),
                fua: seed == 2,
            },
            seed.into(),
        );
        assert!(c.status.is_success(), "{c:?}");
        let mut media = vec![0u8; len as usize];
        r.model.read_media(slba as usize * 512, &mut media);
        assert!(media == p, "media differs after a {len}-byte write");
        r.pool.fill(&buf, 0, len as usize, 0xEE).unwrap();
        let c = run(
            &mut qp,
            IoCommand::Read {
                nsid: 1,
                slba,
                blocks,
                buf: common::data(&buf, len),
            },
            seed.into(),
        );
        assert!(c.status.is_success(), "{c:?}");
        let mut back = vec![0u8; len as usize];
        r.pool.read(&buf, 0, &mut back).unwrap();
        assert!(back == p, "read-back differs for {len} bytes");
    }
    assert!(run(&mut qp, IoCommand::Flush { nsid: 1 }, 9).status.is_success());

    // Write zeroes and deallocate read back as zeroes.
    let c = run(
        &mut qp,
        IoCommand::WriteZeroes {
            nsid: 1,
            slba: 100,
            blocks: 8,
            deallocate: false,
        },
        10,
    );
    assert!(c.status.is_success());
    let c = run(
        &mut qp,
        IoCommand::Deallocate {
            nsid: 1,
            slba: 108,
            blocks: 8,
        },
        11,
    );
    assert!(c.status.is_success());
    let mut media = vec![0xFFu8; 16 * 512];
    r.model.read_media(100 * 512, &mut media);
    assert!(media.iter().all(|&b| b == 0));
    let mut rest = vec![0u8; 512];
    r.model.read_media(116 * 512, &mut rest);
    assert_eq!(rest, common::pattern(2, 128 * 1024)[16 * 512..17 * 512]);

    // Errors come back as statuses; bad requests are rejected with the request handed back.
    let c = run(
        &mut qp,
        IoCommand::Read {
            nsid: 1,
            slba: 32 * 1024 - 1,
            blocks: 2,
            buf: common::data(&buf, 1024),
        },
        12,
    );
    assert_eq!(c.status.code, StatusCode::LBA_OUT_OF_RANGE);
    assert!(c.status.dnr);
    let c = run(
        &mut qp,
        IoCommand::Read {
            nsid: 2,
            slba: 0,
            blocks: 1,
            buf: common::data(&buf, 512),
        },
        13,
    );
    assert_eq!(c.status.code, StatusCode::INVALID_NAMESPACE_OR_FORMAT);
    let odd = keel_nvme_pcie::DataBuf {
        iova: buf.iova + 2,
        len_bytes: 512,
    };
    match qp.submit(
        &IoCommand::Read {
            nsid: 1,
            slba: 0,
            blocks: 1,
            buf: odd,
        },
        14,
    ) {
        Submitted::Rejected(14, e) => assert!(e.to_string().contains("dword"), "{e}"),
        other => panic!("{other:?}"),
    }
    r.model.fail_next_io(StatusCode::WRITE_FAULT.dnr());
    let c = run(&mut qp, IoCommand::Flush { nsid: 1 }, 15);
    assert_eq!(c.status.code, StatusCode::WRITE_FAULT);
    assert_eq!(qp.outstanding(), 0);

    r.ctrlr.delete_io_qpair(qp, |_, _| panic!("nothing in flight")).unwrap();
    assert_eq!(r.model.io_sq_count(), 0);
    assert_eq!(r.ctrlr.state(), CtrlrState::Enabled);
    let model = r.model.clone();
    r.ctrlr.shutdown().unwrap();
    // CC.EN = 0 after the shutdown notification completed.
    use keel_nvme_pcie::Registers;
    assert_eq!(model.read32(0x14) & 1, 0);
}
