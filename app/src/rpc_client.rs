//! `keel-rpc`: a minimal JSON-RPC client for keel-tgt (or any SPDK-style target), for where
//! SPDK's Python `spdk-rpc` is not available — the lab guest has no Python — and for scripts.
//!
//! ```sh
//! keel-rpc [-s SOCKET] [-w SECS] METHOD [PARAMS_JSON | KEY=VALUE ...]
//! keel-rpc bdev_malloc_create '{"name":"M0","num_blocks":16384,"block_size":4096}'
//! keel-rpc ublk_start_disk bdev_name=M0 ublk_id=0 queue_depth=64
//! ```
//!
//! `KEY=VALUE` pairs build the params object; a value that parses as JSON (a number, `true`,
//! `[..]`, `{..}`, `"quoted"`) is taken as such, anything else as a string. The result is
//! printed on stdout — a string bare, anything else as compact JSON — and the exit status is 0;
//! a JSON-RPC error is printed on stderr as `{"code":..,"message":..}` with status 1; a
//! connection or protocol failure with status 2.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Map, Value};

#[derive(Parser, Debug)]
#[command(name = "keel-rpc", version, about = "Call one JSON-RPC method of keel-tgt")]
struct Args {
    /// The target's RPC socket.
    #[arg(short = 's', long = "server", default_value = "/var/tmp/spdk.sock")]
    server: PathBuf,
    /// Keep trying to connect for this many seconds (a target that is still starting).
    #[arg(short = 'w', long = "wait", default_value_t = 0)]
    wait_secs: u64,
    /// Give up on the reply after this many seconds.
    #[arg(short = 't', long = "timeout", default_value_t = 120)]
    timeout_secs: u64,
    /// The method.
    method: String,
    /// A JSON object of params, or KEY=VALUE pairs.
    params: Vec<String>,
}

fn params(args: &[String]) -> Result<Option<Value>, String> {
    match args {
        [] => Ok(None),
        [one] if one.trim_start().starts_with('{') => serde_json::from_str(one)
            .map(Some)
            .map_err(|e| format!("params are not a JSON object: {e}")),
        pairs => {
            let mut m = Map::new();
            for p in pairs {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| format!("'{p}' is neither a JSON object nor KEY=VALUE"))?;
                let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
                m.insert(k.to_string(), v);
            }
            Ok(Some(Value::Object(m)))
        }
    }
}

fn connect(path: &PathBuf, wait: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + wait;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(format!("cannot connect to {}: {e}", path.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn call(args: &Args) -> Result<Value, String> {
    let mut req = json!({"jsonrpc": "2.0", "method": args.method, "id": 1});
    if let Some(p) = params(&args.params)? {
        req["params"] = p;
    }
    let mut s = connect(&args.server, Duration::from_secs(args.wait_secs))?;
    s.set_read_timeout(Some(Duration::from_secs(args.timeout_secs.max(1))))
        .map_err(|e| e.to_string())?;
    s.write_all(req.to_string().as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("no reply: {e}"))?;
        if n == 0 {
            return Err("the target closed the connection without a reply".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) if e.is_eof() => continue,
            Some(Err(e)) => return Err(format!("malformed reply: {e}")),
            None => continue,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match call(&args) {
        Ok(reply) => {
            if let Some(err) = reply.get("error") {
                eprintln!("{err}");
                return ExitCode::from(1);
            }
            match reply.get("result") {
                Some(Value::String(s)) => println!("{s}"),
                Some(v) => println!("{v}"),
                None => {
                    eprintln!("keel-rpc: reply without a result: {reply}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel-rpc: {e}");
            ExitCode::from(2)
        }
    }
}
