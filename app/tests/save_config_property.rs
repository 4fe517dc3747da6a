//! Property: a configuration from save_config always loads into a fresh keel-tgt and rebuilds
//! the same stack (issue 13, item 5).
//!
//! Each case starts keel-tgt over four image files (uring bdevs `U0..U3`), runs a random
//! sequence of RPCs — create and delete of malloc, null, passthru, delay and error bdevs (the
//! deletes aimed at anything, held bases included), `dm_create` with and without random tables
//! over whatever exists, `dm_load`, `dm_resume`, `dm_suspend`, `dm_clear`, `dm_remove` (with
//! and without force), and md raid1 arrays over the image bdevs via `md_create` / `md_stop` as
//! black boxes — most of which may fail; then saves the configuration the way `spdk-rpc
//! save_config` does, stops the target, starts a fresh one with `-c` on it and compares:
//! `bdev_get_bdevs` (name, product, block size, block count, claimed), `dm_table` (live and
//! staged), each device's suspended flag and `md_get_arrays` (name, level, uuid, size). The
//! fresh target must start at all — a delete of a bdev a dm table named used to leave a table
//! that no longer loaded.
//!
//! Bounded: cases run for `KEEL_PROP_SECS` seconds (default 40). The seed is printed;
//! `KEEL_PROP_SEED=<n>` replays one. A failure prints the seed, the case's RPC log and the
//! saved configuration.
//!
//! Left out on purpose (md's own work, issue 13 round two): deleting an md member, stopping an
//! array something stands on, `md_stop` without clearing the superblocks (examine-on-appear
//! assembles such an array again at the restart, degraded when a member is taken by a layer)
//! and md arrays over volatile (malloc) members.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_exit, Target};
use serde_json::{json, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len() as u64) as usize])
        }
    }
}

/// A persistent JSON-RPC connection.
struct Client {
    s: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client {
            s,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, (i64, String)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.s.write_all(req.to_string().as_bytes()).unwrap();
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let v: Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(v["id"], id, "{v}");
                return match v.get("error") {
                    Some(e) => Err((
                        e["code"].as_i64().unwrap_or(0),
                        e["message"].as_str().unwrap_or("").into(),
                    )),
                    None => Ok(v["result"].clone()),
                };
            }
            let mut b = [0u8; 65536];
            let n = match self.s.read(&mut b) {
                Ok(n) => n,
                Err(e) => return Err((NO_ANSWER, format!("{method}: no answer: {e}"))),
            };
            assert!(n > 0, "{method}: the target closed the connection");
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    fn ok(&mut self, method: &str, params: Option<Value>) -> Value {
        self.call(method, params).unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }
}

/// What must survive a restart.
#[derive(Debug, PartialEq)]
struct State {
    bdevs: Vec<Value>,
    live: String,
    staged: String,
    devices: Vec<Value>,
    arrays: Vec<Value>,
}

fn state(c: &mut Client) -> State {
    let mut bdevs: Vec<Value> = c
        .ok("bdev_get_bdevs", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            json!({"name": b["name"], "product_name": b["product_name"], "block_size": b["block_size"],
                   "num_blocks": b["num_blocks"], "claimed": b["claimed"]})
        })
        .collect();
    bdevs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let live = c.ok("dm_table", None).as_str().unwrap().to_string();
    let staged = c
        .ok("dm_table", Some(json!({"inactive": true})))
        .as_str()
        .unwrap()
        .to_string();
    let devices = c
        .ok("dm_info", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|d| json!({"name": d["name"], "suspended": d["suspended"], "tables": d["tables_present"], "minor": d["minor"]}))
        .collect();
    let mut arrays: Vec<Value> = c
        .ok("md_get_arrays", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let mut o = serde_json::Map::new();
            for k in ["name", "level", "uuid", "raid_devices", "array_size", "array_size_kib"] {
                if let Some(v) = a.get(k) {
                    o.insert(k.into(), v.clone());
                }
            }
            Value::Object(o)
        })
        .collect();
    arrays.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    State {
        bdevs,
        live,
        staged,
        devices,
        arrays,
    }
}

/// save_config as spdk-rpc composes it: every subsystem's framework_get_config.
fn save_config(c: &mut Client) -> Value {
    let subs = c.ok("framework_get_subsystems", None);
    let mut out = Vec::new();
    for s in subs.as_array().unwrap() {
        let name = s["subsystem"].as_str().unwrap();
        let config = c.ok(
            "framework_get_config",
            Some(json!({"name": name, "with_batches": false})),
        );
        out.push(json!({"subsystem": name, "config": config}));
    }
    json!({ "subsystems": out })
}

/// The current bdevs: (name, product_name, claimed).
fn bdev_list(c: &mut Client) -> Vec<(String, String, bool)> {
    c.ok("bdev_get_bdevs", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["product_name"].as_str().unwrap().to_string(),
                b["claimed"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn delete_method(product: &str) -> Option<&'static str> {
    Some(match product {
        "Malloc disk" => "bdev_malloc_delete",
        "Null disk" => "bdev_null_delete",
        "passthru" => "bdev_passthru_delete",
        "delay" => "bdev_delay_delete",
        "Error Injection Disk" => "bdev_error_delete",
        "URING bdev" => "bdev_uring_delete",
        _ => return None,
    })
}

/// A random table over `names` (sometimes naming something that does not exist).
fn random_table(rng: &mut Rng, names: &[String]) -> String {
    let mut out = String::new();
    let mut start = 0u64;
    for _ in 0..1 + rng.below(3) {
        let len = 8 * (1 + rng.below(32));
        let dev = |rng: &mut Rng| -> String {
            if rng.chance(5) {
                "Nope".to_string()
            } else {
                rng.pick(names).cloned().unwrap_or_else(|| "Nope".to_string())
            }
        };
        let line = match rng.below(6) {
            0 => format!("{start} {len} zero"),
            1 => format!("{start} {len} error"),
            2 => format!("{start} {len} striped 2 8 {} 0 {} 8", dev(rng), dev(rng)),
            3 => format!("{start} {len} delay {} 0 0", dev(rng)),
            _ => format!("{start} {len} linear {} {}", dev(rng), 8 * rng.below(2)),
        };
        out.push_str(&line);
        out.push('\n');
        start += len;
    }
    out
}

/// The error code [`Client::call`] reports when the target did not answer within the socket's
/// read timeout (no JSON-RPC code is this negative).
const NO_ANSWER: i64 = i64::MIN;

struct Case {
    log: Vec<String>,
}

impl Case {
    fn call(&mut self, c: &mut Client, method: &str, params: Value) -> bool {
        let r = c.call(method, Some(params.clone()));
        if let Err((NO_ANSWER, msg)) = &r {
            panic!("{msg}\n--- RPC log before it\n{}", self.log.join("\n"));
        }
        self.log.push(format!(
            "{method} {params} -> {}",
            match &r {
                Ok(v) => format!("ok {v}"),
                Err((code, msg)) => format!("err {code} {msg}"),
            }
        ));
        r.is_ok()
    }
}

/// One random step; `dir` holds the image files `img0..img3`.
fn step(rng: &mut Rng, c: &mut Client, case: &mut Case, md_members: &mut Vec<(String, [String; 2])>, dir: &Path) {
    let bdevs = bdev_list(c);
    let names: Vec<String> = bdevs.iter().map(|b| b.0.clone()).collect();
    let dms = ["X0", "X1", "X2", "X3"];
    match rng.below(20) {
        0 => {
            let n = format!("M{}", rng.below(5));
            let (blocks, bs) = if rng.chance(50) { (4096, 512) } else { (512, 4096) };
            case.call(
                c,
                "bdev_malloc_create",
                json!({"name": n, "num_blocks": blocks, "block_size": bs}),
            );
        }
        1 => {
            let n = format!("N{}", rng.below(3));
            case.call(
                c,
                "bdev_null_create",
                json!({"name": n, "num_blocks": 4096, "block_size": 512}),
            );
        }
        2 => {
            if let Some(base) = rng.pick(&names).cloned() {
                let n = format!("P{}", rng.below(4));
                case.call(c, "bdev_passthru_create", json!({"base_bdev_name": base, "name": n}));
            }
        }
        3 => {
            if let Some(base) = rng.pick(&names).cloned() {
                let n = format!("D{}", rng.below(3));
                case.call(
                    c,
                    "bdev_delay_create",
                    json!({"base_bdev_name": base, "name": n, "avg_read_latency": 0, "p99_read_latency": 0,
                           "avg_write_latency": 0, "p99_write_latency": 0}),
                );
            }
        }
        4 => {
            if let Some(base) = rng.pick(&names).cloned() {
                case.call(c, "bdev_error_create", json!({"base_name": base}));
            }
        }
        5..=7 => {
            // Delete anything (held bases included) except md members while their array runs.
            if let Some((name, product, _)) = rng.pick(&bdevs).cloned() {
                let member = md_members.iter().any(|(_, m)| m.contains(&name));
                if let (Some(method), false) = (delete_method(&product), member) {
                    case.call(c, method, json!({"name": name}));
                }
            }
        }
        8 | 9 => {
            let n = dms[rng.below(4) as usize];
            if rng.chance(25) {
                case.call(c, "dm_create", json!({"name": n}));
            } else {
                let t = random_table(rng, &names);
                case.call(c, "dm_create", json!({"name": n, "table": t}));
            }
        }
        10 | 11 => {
            let n = dms[rng.below(4) as usize];
            let t = random_table(rng, &names);
            case.call(c, "dm_load", json!({"name": n, "table": t}));
        }
        12 => {
            let n = dms[rng.below(4) as usize];
            case.call(c, "dm_resume", json!({"name": n}));
        }
        13 => {
            let n = dms[rng.below(4) as usize];
            case.call(c, "dm_suspend", json!({"name": n, "noflush": rng.chance(50)}));
        }
        14 => {
            let n = dms[rng.below(4) as usize];
            case.call(c, "dm_clear", json!({"name": n}));
        }
        15 | 16 => {
            let n = dms[rng.below(4) as usize];
            case.call(c, "dm_remove", json!({"name": n, "force": rng.chance(50)}));
        }
        17 => {
            // A raid1 over two free image bdevs.
            let free: Vec<String> = bdevs
                .iter()
                .filter(|(n, p, claimed)| p == "URING bdev" && !claimed && !n.is_empty())
                .map(|b| b.0.clone())
                .collect();
            if free.len() >= 2 {
                let a = free[rng.below(free.len() as u64) as usize].clone();
                let b = free.iter().find(|x| **x != a).unwrap().clone();
                let n = format!("A{}", rng.below(2));
                if case.call(
                    c,
                    "md_create",
                    json!({"name": n, "level": "raid1", "members": [a, b], "assume_clean": true}),
                ) {
                    md_members.push((n, [a, b]));
                }
            }
        }
        18 => {
            // Stop an array nothing stands on.
            if let Some((n, _)) = rng.pick(md_members).cloned() {
                let held = bdevs.iter().any(|(b, _, claimed)| *b == n && *claimed);
                // bdev_raid_delete with clear_sb: md_stop leaves the superblocks, and md's
                // examine-on-appear assembles the array again after a restart (md's rules,
                // round two of issue 13).
                if !held && case.call(c, "bdev_raid_delete", json!({"name": n, "clear_sb": true})) {
                    md_members.retain(|(m, _)| *m != n);
                }
            }
        }
        _ => {
            // Bring back a deleted image bdev.
            let i = rng.below(4);
            let n = format!("U{i}");
            if !names.contains(&n) {
                let f = dir.join(format!("img{i}"));
                case.call(
                    c,
                    "bdev_uring_create",
                    json!({"name": n, "filename": f, "block_size": 512}),
                );
            }
        }
    }
}

fn start_with_config(sock: &Path, cfg: &Path) -> Result<std::process::Child, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-tgt"))
        .arg("-r")
        .arg(sock)
        .args(["--no-pin", "-L", "warn", "-c"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if UnixStream::connect(sock).is_ok() {
            return Ok(child);
        }
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            return Err(format!("keel-tgt -c exited ({st}): {err}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("keel-tgt -c did not open its socket".into())
}

fn stop(c: &mut Client, child: &mut std::process::Child) {
    let _ = c.call("spdk_kill_instance", Some(json!({"sig_name": "SIGTERM"})));
    let st = wait_exit(child, Duration::from_secs(30)).expect("keel-tgt exits");
    assert!(st.success(), "keel-tgt exit status {st}");
}

fn run_case(seed: u64, steps: usize) {
    let mut rng = Rng(seed | 1);
    let mut case = Case { log: Vec::new() };
    let t = Target::start(&[]);
    let dir = t.dir.path().to_path_buf();
    let mut c = Client::connect(&t.sock);
    for i in 0..4 {
        let f = dir.join(format!("img{i}"));
        std::fs::File::create(&f).unwrap().set_len(8 << 20).unwrap();
        c.ok(
            "bdev_uring_create",
            Some(json!({"name": format!("U{i}"), "filename": f, "block_size": 512})),
        );
    }
    let mut md_members = Vec::new();
    for _ in 0..steps {
        step(&mut rng, &mut c, &mut case, &mut md_members, &dir);
    }
    let before = state(&mut c);
    let ok_ops = case.log.iter().filter(|l| l.contains(" -> ok")).count();
    eprintln!(
        "  {} of {} calls succeeded; saved {} bdevs, {} dm devices ({} staged tables), {} md arrays",
        ok_ops,
        case.log.len(),
        before.bdevs.len(),
        before.devices.len(),
        before.staged.lines().filter(|l| !l.trim_end().ends_with(':')).count(),
        before.arrays.len()
    );
    let cfg = save_config(&mut c);
    let cfg_path = dir.join("saved.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let mut t = t;
    stop(&mut c, &mut t.child);

    let report = |what: &str| -> String {
        format!(
            "seed {seed}: {what}\n--- RPC log\n{}\n--- saved configuration\n{}",
            case.log.join("\n"),
            serde_json::to_string_pretty(&cfg).unwrap()
        )
    };
    let sock2 = dir.join("spdk2.sock");
    let mut child = match start_with_config(&sock2, &cfg_path) {
        Ok(ch) => ch,
        Err(e) => panic!("{}", report(&format!("the saved configuration does not load: {e}"))),
    };
    let mut c2 = Client::connect(&sock2);
    let after = state(&mut c2);
    if before != after {
        panic!(
            "{}",
            report(&format!(
                "a different stack after the restart:\nbefore {before:#?}\nafter {after:#?}"
            ))
        );
    }
    stop(&mut c2, &mut child);
}

#[test]
fn save_config_always_reloads_the_same_stack() {
    let budget = Duration::from_secs(
        std::env::var("KEEL_PROP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40),
    );
    let fixed = std::env::var("KEEL_PROP_SEED").ok().and_then(|s| s.parse::<u64>().ok());
    let first = fixed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("save_config property: first seed {first} (KEEL_PROP_SEED={first} replays it)");
    let started = Instant::now();
    let mut seed = first;
    let mut cases = 0;
    loop {
        eprintln!("save_config property: case seed {seed}");
        run_case(seed, 40);
        cases += 1;
        if fixed.is_some() || started.elapsed() > budget {
            break;
        }
        seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    }
    println!("save_config property: {cases} cases in {:?}", started.elapsed());
    assert!(cases >= 1);
}
