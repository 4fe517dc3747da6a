//! bdev_nvme over the PCIe transport, against keel-nvme-pcie's in-process controller model:
//! attach gives `Nvme0n1` with the model's geometry; keel-load verify at 4 KiB and 128 KiB on
//! one and on two reactors (one queue pair each); a controller whose MDTS is smaller than the
//! I/O (commands cut by the qpair); a queue smaller than the job's depth (requeue on a full
//! submission queue); flush, unmap and write zeroes (zeroes on the media);
//! bdev_nvme_get_controllers' identity and trid; save_config; detach (the shutdown
//! notification) and attach again.

mod common;

use keel_load::{JobStatus, Workload};
use keel_nvme::NvmeModule;
use keel_nvme_pcie::model::ModelConfig;
use keel_reactor::CoreId;

fn verify_ok(r: &keel_load::JobResult, what: &str) {
    assert_eq!(r.status, JobStatus::Terminated, "{what}: {r:?}");
    assert_eq!(r.ios_failed, 0, "{what}");
    assert!(r.miscompare.is_none(), "{what}: {:?}", r.miscompare);
}

#[test]
fn verify_split_requeue_zeroes_identity_and_reattach() {
    let (d, reg, model) = common::setup(2, ModelConfig::default(), 64);
    let b = reg.get("Nvme0n1").unwrap();
    assert_eq!((b.info().block_size, b.info().num_blocks), (512, 32 * 1024));
    drop(b);

    // Verify at 4 KiB and 128 KiB, on core 0, then on both cores at once.
    for size in [4096u64, 131072] {
        let job = common::start(
            d,
            &reg,
            0,
            "Nvme0n1",
            common::spec("Nvme0n1", Workload::Verify, 16, size),
        );
        verify_ok(&common::run_for(d, &job, 1_000), &format!("verify {size}"));
    }
    let mut a = common::spec("Nvme0n1", Workload::Verify, 16, 4096);
    a.offset_blocks = 0;
    a.length_blocks = 16 * 1024;
    let mut b = common::spec("Nvme0n1", Workload::Verify, 16, 131072);
    b.offset_blocks = 16 * 1024;
    b.length_blocks = 16 * 1024;
    let ja = common::start(d, &reg, 0, "Nvme0n1", a);
    let jb = common::start(d, &reg, 1, "Nvme0n1", b);
    assert!(d.run_until(100_000_000, || ja.completed_ios() >= 1_000 && jb.completed_ios() >= 300));
    assert_eq!(model.io_sq_count(), 2, "one I/O queue pair per reactor");
    verify_ok(&common::stop(d, &ja), "verify core 0");
    verify_ok(&common::stop(d, &jb), "verify core 1");
    d.run_until_idle(10_000);
    assert_eq!(
        model.io_sq_count(),
        0,
        "the queue pairs go with the reactors' last channels"
    );

    for w in [Workload::Flush, Workload::Unmap, Workload::WriteZeroes] {
        let job = common::start(d, &reg, 0, "Nvme0n1", common::spec("Nvme0n1", w, 8, 65536));
        let r = common::run_for(d, &job, 300);
        assert_eq!(r.ios_failed, 0, "{w:?}: {r:?}");
    }
    // The last job wrote zeroes over whole 64 KiB pieces: the first one it hit reads as zeroes.
    let mut media = vec![0xAAu8; 32 * 1024 * 512];
    model.read_media(0, &mut media);
    assert!(
        media.chunks(65536).any(|c| c.iter().all(|&b| b == 0)),
        "no 64 KiB piece reads back as zeroes after write zeroes"
    );

    // get_controllers: trid and the controller's identity.
    let m = NvmeModule::of(&reg);
    let j = m.controllers_json(Some("Nvme0")).unwrap();
    let c = &j[0]["ctrlrs"][0];
    assert_eq!(c["trid"]["trtype"], "PCIe", "{j}");
    assert_eq!(c["trid"]["traddr"], "model:0", "{j}");
    assert_eq!(c["state"], "enabled");
    assert_eq!(c["ctrlr_data"]["serial_number"], "KEELMODEL0", "{j}");
    assert_eq!(c["ctrlr_data"]["vendor_id"], "0x1b36", "{j}");
    let cfg = keel_bdev::BdevModule::config(&*m, &reg);
    let attach: Vec<_> = cfg
        .iter()
        .filter(|e| e.call.method == "bdev_nvme_attach_controller")
        .collect();
    assert_eq!(attach.len(), 1);
    assert_eq!(attach[0].call.params["trtype"], "PCIe");
    assert_eq!(attach[0].call.params["traddr"], "model:0");

    // Detach sends the shutdown notification; attaching again brings the namespace back.
    d.enter(CoreId(0), || m.detach("Nvme0").unwrap());
    d.run_until_idle(10_000);
    assert!(reg.get("Nvme0n1").is_none(), "the bdev is gone after detach");
    assert!(m.controllers_json(Some("Nvme0")).is_err());
    assert_eq!(common::attach(d, &reg, &model, "Nvme0"), ["Nvme0n1"]);
    let job = common::start(
        d,
        &reg,
        0,
        "Nvme0n1",
        common::spec("Nvme0n1", Workload::Verify, 8, 4096),
    );
    verify_ok(&common::run_for(d, &job, 500), "verify after re-attach");
}

#[test]
fn small_mdts_and_small_queue_split_and_requeue() {
    // MDTS 2^1 pages = 8 KiB per command; 8 queue entries (7 usable) under a job of depth 32.
    let cfg = ModelConfig {
        mdts: 1,
        mqes_0based: 7,
        ..ModelConfig::default()
    };
    let (d, reg, _model) = common::setup(1, cfg, 64);
    for size in [4096u64, 131072] {
        let job = common::start(
            d,
            &reg,
            0,
            "Nvme0n1",
            common::spec("Nvme0n1", Workload::Verify, 32, size),
        );
        verify_ok(
            &common::run_for(d, &job, 500),
            &format!("verify {size} with MDTS 8 KiB, 8 entries"),
        );
    }
}
