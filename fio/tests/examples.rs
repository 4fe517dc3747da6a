//! The job files under examples/fio/ run as documented (`KEEL_FIO` naming the engine; the config
//! path made absolute so fio can run in a scratch directory), shortened to one second each, and
//! every job moves data without error.

mod common;

use std::path::Path;

#[test]
fn example_job_files_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let engine = common::engine_path();
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = 0;
    let mut files: Vec<_> = std::fs::read_dir(root.join("examples/fio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "fio"))
        .collect();
    files.sort();
    for path in files {
        // Run in a scratch directory (fio leaves verify state files in its working directory),
        // with the config path made absolute.
        let conf = root.join("examples/fio/stack.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("runtime=10", "runtime=1")
            .replace(
                "keel_json_conf=examples/fio/stack.json",
                &format!("keel_json_conf={}", conf.display()),
            );
        let job = tmp.path().join(path.file_name().unwrap());
        std::fs::write(&job, text).unwrap();
        let run = common::run_fio(tmp.path(), &job, &[("KEEL_FIO", engine.to_str().unwrap())]);
        for j in run.assert_ok() {
            assert!(
                j.read_bytes + j.write_bytes + j.trim_bytes > 0,
                "{}: job {} moved no data:\n{}",
                path.display(),
                j.name,
                run.dump()
            );
        }
        seen += 1;
    }
    assert!(seen >= 3, "expected the example job files, found {seen}");
}
