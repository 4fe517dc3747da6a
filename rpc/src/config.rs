//! JSON configuration files in SPDK's format (`shared/specs/spdk-rpc.md` §9):
//!
//! ```json
//! { "subsystems": [ { "subsystem": "bdev", "config": [ {"method": "...", "params": {...}} ] } ] }
//! ```
//!
//! `config` may be `null` or empty; an element may itself be an array of calls (a "batch"),
//! applied in order. `/* */` and `//` comments are accepted (SPDK's application loader accepts
//! them). Subsystems Keel does not serve ([`crate::registry::find_subsystem`]) are skipped with
//! a notice, as SPDK skips subsystems that are not linked into the app; a method the registry
//! does not know inside a subsystem Keel has is an error.
//!
//! Loading is all-or-nothing per entry, in file order: the first failing entry stops the load
//! and is reported with its subsystem, position and method.

use std::path::Path;

use keel_reactor::current;
use serde_json::Value;

use crate::context::Ctx;
use crate::error::{RpcError, METHOD_NOT_FOUND};
use crate::registry::{find_method, find_subsystem};

/// One `{method, params}` entry with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCall {
    pub subsystem: String,
    /// 0-based position within the subsystem's `config` (batches flattened).
    pub index: usize,
    pub method: String,
    pub params: Option<Value>,
}

/// A parsed and shape-checked configuration file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigFile {
    pub calls: Vec<ConfigCall>,
    /// Subsystems present in the file but unknown to Keel (skipped).
    pub skipped_subsystems: Vec<String>,
}

fn bad(msg: impl Into<String>) -> RpcError {
    RpcError::invalid_params(msg)
}

/// Removes `//` and `/* */` comments outside JSON strings.
fn strip_comments(text: &str) -> Result<String, RpcError> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut in_str = false;
    let mut start = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                out.push_str(&text[start..i]);
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                start = i;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                out.push_str(&text[start..i]);
                let end = text[i + 2..]
                    .find("*/")
                    .ok_or_else(|| bad("config: unterminated /* comment"))?;
                i = i + 2 + end + 2;
                out.push(' ');
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[start.min(text.len())..]);
    Ok(out)
}

/// The largest configuration file read: SPDK configurations of thousands of bdevs take a few
/// MiB; anything larger is a mistake (`--json /dev/zero`) and is refused after reading at most
/// this much, rather than read until memory runs out.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// Reads a configuration file, at most [`MAX_CONFIG_BYTES`]: a regular file over the limit is
/// refused from its size, anything else (a pipe, a character device) after reading one byte
/// past it. Directories and non-UTF-8 text are refused with the reason.
fn read_bounded(path: &Path) -> Result<String, RpcError> {
    use std::io::Read;
    let cannot = |e: std::io::Error| bad(format!("cannot read config file {}: {e}", path.display()));
    let too_large = |what: String| {
        bad(format!(
            "config file {} is too large: {what}; the limit is {} MiB",
            path.display(),
            MAX_CONFIG_BYTES >> 20
        ))
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if meta.is_dir() {
        return Err(bad(format!(
            "cannot read config file {}: it is a directory",
            path.display()
        )));
    }
    if meta.is_file() && meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large(format!("{} bytes", meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        let kind = if meta.file_type().is_file() {
            "it grew past the limit while being read"
        } else {
            "it is not a regular file and gave more than the limit"
        };
        return Err(too_large(kind.to_string()));
    }
    String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "config file {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

impl ConfigFile {
    /// Reads (at most [`MAX_CONFIG_BYTES`]) and parses a file. Any thread.
    pub fn from_path(path: &Path) -> Result<ConfigFile, RpcError> {
        let text = read_bounded(path)?;
        ConfigFile::parse(&text).map_err(|e| bad(format!("config file {}: {}", path.display(), e.message)))
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<ConfigFile, RpcError> {
        let clean = strip_comments(text)?;
        let root: Value = serde_json::from_str(&clean).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        ConfigFile::from_value(&root)
    }

    /// Shape-checks an already parsed document.
    pub fn from_value(root: &Value) -> Result<ConfigFile, RpcError> {
        let subsystems = root
            .get("subsystems")
            .ok_or_else(|| bad("missing \"subsystems\" key at the top level"))?
            .as_array()
            .ok_or_else(|| bad("\"subsystems\" must be an array"))?;
        let mut out = ConfigFile::default();
        for (si, s) in subsystems.iter().enumerate() {
            let name = s
                .get("subsystem")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("subsystems[{si}]: missing string \"subsystem\"")))?;
            let config = match s.get("config") {
                None | Some(Value::Null) => continue,
                Some(Value::Array(a)) => a,
                Some(_) => return Err(bad(format!("subsystem '{name}': \"config\" must be an array or null"))),
            };
            if find_subsystem(name).is_none() {
                if !config.is_empty() {
                    out.skipped_subsystems.push(name.to_string());
                }
                continue;
            }
            let mut index = 0;
            for entry in config {
                let group: Vec<&Value> = match entry {
                    Value::Array(batch) => batch.iter().collect(),
                    other => vec![other],
                };
                for e in group {
                    let obj = e
                        .as_object()
                        .ok_or_else(|| bad(format!("subsystem '{name}' entry {index}: not an object")))?;
                    for k in obj.keys() {
                        if k != "method" && k != "params" {
                            return Err(bad(format!("subsystem '{name}' entry {index}: unexpected key \"{k}\"")));
                        }
                    }
                    let method = obj
                        .get("method")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("subsystem '{name}' entry {index}: missing string \"method\"")))?;
                    if find_method(method).is_none() {
                        return Err(RpcError::new(
                            METHOD_NOT_FOUND,
                            format!("subsystem '{name}' entry {index}: unknown method '{method}'"),
                        ));
                    }
                    out.calls.push(ConfigCall {
                        subsystem: name.to_string(),
                        index,
                        method: method.to_string(),
                        params: obj.get("params").cloned(),
                    });
                    index += 1;
                }
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for ConfigFile {
    type Err = RpcError;
    fn from_str(text: &str) -> Result<ConfigFile, RpcError> {
        ConfigFile::parse(text)
    }
}

/// [`apply_with`] with a context holding just `registry`.
pub fn apply(
    registry: std::sync::Arc<keel_bdev::BdevRegistry>,
    cfg: ConfigFile,
    done: impl FnOnce(Result<(), RpcError>) + Send + 'static,
) {
    apply_with(Ctx::new(registry), cfg, done)
}

/// Applies every call in order through the method handlers. Called on the main reactor; `done`
/// runs there after the last call, or after the first failure with an error naming the entry.
pub fn apply_with(ctx: Ctx, cfg: ConfigFile, done: impl FnOnce(Result<(), RpcError>) + Send + 'static) {
    for s in &cfg.skipped_subsystems {
        tracing::info!(subsystem = s.as_str(), "config: skipping subsystem Keel does not have");
    }
    step(ctx, cfg.calls.into_iter(), Box::new(done));
}

type Done = Box<dyn FnOnce(Result<(), RpcError>) + Send>;

fn step(ctx: Ctx, mut calls: std::vec::IntoIter<ConfigCall>, done: Done) {
    let Some(call) = calls.next() else {
        return done(Ok(()));
    };
    let Some(m) = find_method(&call.method) else {
        return done(Err(RpcError::method_not_found(&call.method)));
    };
    let core = current().core();
    let cores = current().cores().clone();
    let ctx2 = ctx.clone();
    m.call(
        &ctx,
        call.params.clone(),
        Box::new(move |r| match r {
            // Continue by message: replies may come from deep inside a handler, and a long
            // config must not grow the stack.
            Ok(_) => {
                let _ = cores.run_on(core, move || step(ctx2, calls, done));
            }
            Err(e) => done(Err(RpcError::new(
                e.code,
                format!(
                    "config subsystem '{}' entry {} ({}): {}",
                    call.subsystem, call.index, call.method, e.message
                ),
            ))),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_shapes_with_comments_and_batches() {
        let text = r#"
        // leading comment
        { "subsystems": [
            { "subsystem": "accel", "config": [ {"method": "accel_set_options", "params": {}} ] },
            { "subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 8, "block_size": 512}},
                [ {"method": "bdev_null_create", "params": {"name": "N/*x*/", "num_blocks": 8, "block_size": 512}},
                  {"method": "bdev_wait_for_examine"} ]
            ] },
            { "subsystem": "scsi", "config": null }
        ] }"#;
        let c = ConfigFile::parse(text).unwrap();
        assert_eq!(c.calls.len(), 3);
        assert_eq!(c.calls[1].params.as_ref().unwrap()["name"], "N/*x*/");
        assert_eq!(c.calls[2].params, None);
        assert_eq!(c.skipped_subsystems, vec!["accel"]);
    }

    #[test]
    fn rejects_malformed_files_with_a_position() {
        for (text, needle) in [
            ("{", "invalid JSON"),
            ("[]", "missing \"subsystems\""),
            (r#"{"subsystems": {}}"#, "must be an array"),
            (r#"{"subsystems": [{"config": []}]}"#, "missing string \"subsystem\""),
            (
                r#"{"subsystems": [{"subsystem": "bdev", "config": 3}]}"#,
                "array or null",
            ),
            (
                r#"{"subsystems": [{"subsystem": "bdev", "config": [{"params": {}}]}]}"#,
                "missing string \"method\"",
            ),
            (
                r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "nope"}]}]}"#,
                "unknown method 'nope'",
            ),
            (
                r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_wait_for_examine", "x": 1}]}]}"#,
                "unexpected key",
            ),
            ("/* open", "unterminated"),
        ] {
            let e = ConfigFile::parse(text).unwrap_err();
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }
}
