//! What the engine refuses, with the message fio prints and a failing exit status: an unknown
//! bdev, a config that does not load (bad parameters, missing file), no config at all,
//! `thread=0`, a bs that is not in whole blocks, and a fio version other than 3.33 (simulated
//! through the engine's test hook, which can only add a refusal, never lift one).

mod common;

use common::Scratch;

const JOB: &str = "[j]\nrw=randread\nbs=4k\ntime_based=1\nruntime=1\n";

#[test]
fn unknown_bdev_is_named_with_what_the_config_defines() {
    let s = Scratch::default_stack();
    let run = s.run(&s.job_file(&format!("{JOB}filename=Nope\n")), &[]);
    run.assert_refused("unknown bdev 'Nope'");
    run.assert_refused("defines Null0, Malloc0");
}

#[test]
fn config_that_fails_to_load_is_reported_with_its_entry() {
    let s = Scratch::with_bdevs(serde_json::json!([
        {"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 8, "block_size": 1000}}
    ]));
    let run = s.run(&s.job_file(&format!("{JOB}filename=M\n")), &[]);
    run.assert_refused("entry 0 (bdev_malloc_create)");
    run.assert_refused("block_size");

    let missing = s
        .job_file(&format!("{JOB}filename=M\n"))
        .replace("stack.json", "missing.json");
    s.run(&missing, &[]).assert_refused("cannot read config file");

    let no_conf: String = s
        .job_file(&format!("{JOB}filename=M\n"))
        .lines()
        .filter(|l| !l.starts_with("keel_json_conf"))
        .map(|l| format!("{l}\n"))
        .collect();
    s.run(&no_conf, &[]).assert_refused("keel_json_conf option is not set");
}

#[test]
fn thread_0_is_refused() {
    let s = Scratch::default_stack();
    let text = s
        .job_file(&format!("{JOB}filename=Null0\n"))
        .replace("thread=1", "thread=0");
    s.run(&text, &[]).assert_refused("thread=1 is required");
}

#[test]
fn other_fio_versions_are_refused_at_load() {
    let s = Scratch::default_stack();
    let run = s.run(
        &s.job_file(&format!("{JOB}filename=Null0\n")),
        &[(keel_fio::TEST_VERSION_ENV, "fio-3.35")],
    );
    run.assert_refused("supports fio 3.33 only");
    run.assert_refused("the running fio is fio-3.35");
}

#[test]
fn block_size_mismatch_is_explained() {
    let s = Scratch::default_stack();
    let run = s.run(
        &s.job_file("[j]\nrw=randread\nbs=2k\nnumber_ios=10\nfilename=Null0\n"),
        &[],
    );
    run.assert_refused("not in whole 4096-byte blocks");
}
