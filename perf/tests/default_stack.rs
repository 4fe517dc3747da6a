//! With no --json the binary builds the embedded default stack (Null0 1 GiB, Malloc0 128 MiB,
//! 4 KiB blocks) and runs the default workload (4 KiB randread, qd 128) on both.

mod common;

#[test]
fn no_arguments_but_time_runs_the_default_workload_on_the_default_stack() {
    let (code, out, err) = common::run_bin(&["-t", "1", "--no-pin", "--output-format", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let jobs = v["results"].as_array().unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j["job"].as_str().unwrap()).collect();
    assert_eq!(names, ["Null0", "Malloc0"]);
    let two = std::thread::available_parallelism().unwrap().get() >= 2;
    let masks: Vec<&str> = jobs.iter().map(|j| j["core_mask"].as_str().unwrap()).collect();
    assert_eq!(
        masks,
        if two { vec!["0x1", "0x2"] } else { vec!["0x1", "0x1"] },
        "one core per default bdev"
    );
    for j in jobs {
        assert_eq!(j["workload"], "randread");
        assert_eq!(j["queue_depth"], 128);
        assert_eq!(j["io_size"], 4096);
        assert!(j["iops"].as_f64().unwrap() > 1000.0, "{j}");
    }
}
