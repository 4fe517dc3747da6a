//! Turning a call's `params` into a typed request: the decode helpers every method file shares.
//!
//! A leaf: it uses nothing of the crate but [`RpcError`]. Handlers run on the main reactor and
//! own the `params` value they pass in.
//!
//! SPDK answers a malformed request with different codes depending on the module: the
//! application methods and Keel's own (dm, md) use -32602 ([`decode`]), most bdev modules
//! -32603 and the raid module -32700, both with a "spdk_json_decode_object failed" message
//! ([`decode_with`], [`decode_internal`]). The [`params!`] macro decodes and returns the error
//! through the handler's reply in one line.
//!
//! Params are objects. SPDK decodes every method's params with `spdk_json_decode_object`, which
//! takes only an object, so positional (array) params fail every method with -32603
//! "spdk_json_decode_object failed" ([`refuse_positional`]). [`crate::MethodInfo::call`] — the
//! one way the server and configuration files run a handler — checks that before the handler
//! runs, and [`decode`] refuses arrays too, since serde would otherwise fill a struct from a
//! sequence in field order (`bdev_null_create ["PN", 2048, 512]` once created a bdev).
//!
//! Messages name the parameter, never the decoder's types: a wrong type reads
//! `Invalid parameters: num_blocks: invalid type: string "x", expected u64` (the path comes
//! from `serde_path_to_error`), and serde's `struct Name` wording becomes "an object".

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::{RpcError, INTERNAL_ERROR};

/// SPDK's message for params its object decoder cannot take (-32603).
pub const DECODE_FAILED: &str = "spdk_json_decode_object failed";

/// Refuses positional (array) params with SPDK's -32603 "spdk_json_decode_object failed",
/// whatever the method (see the module docs).
pub(crate) fn refuse_positional(params: &Option<Value>) -> Result<(), RpcError> {
    match params {
        Some(Value::Array(_)) => Err(RpcError::new(
            INTERNAL_ERROR,
            format!("{DECODE_FAILED}: params must be an object of named parameters, not an array"),
        )),
        _ => Ok(()),
    }
}

/// Decodes `params` into `T`, refusing unknown keys and wrong types with -32602 and a
/// description of the problem that names the parameter. Absent params decode as `{}`; an array
/// is refused as [`refuse_positional`] does.
pub(crate) fn decode<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    refuse_positional(&params)?;
    let v = params.unwrap_or_else(|| json!({}));
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let reason = plain_reason(&e.into_inner().to_string());
        // serde names the key itself in "unknown field `x`": no path needed then.
        let named = path
            .rsplit('.')
            .next()
            .is_some_and(|last| reason.contains(&format!("`{last}`")));
        let message = if path.is_empty() || path == "." || named {
            format!("Invalid parameters: {reason}")
        } else {
            format!("Invalid parameters: {path}: {reason}")
        };
        RpcError::invalid_params(message)
    })
}

/// serde's text without the names of Keel's types: "expected struct Kill with 1 element" and
/// "expected struct Kill" become "expected an object".
fn plain_reason(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len == 0 {
            out.push_str("struct ");
            rest = after;
            continue;
        }
        out.push_str("an object");
        rest = &after[name_len..];
        // "with N element(s)" describes the sequence form of the struct: drop it.
        if let Some(tail) = rest.strip_prefix(" with ") {
            let digits = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
            if digits > 0 {
                let t = &tail[digits..];
                if let Some(t) = t.strip_prefix(" elements").or_else(|| t.strip_prefix(" element")) {
                    rest = t;
                }
            }
        }
    }
    out.push_str(rest);
    out
}

/// Like [`decode`] but failing with `code` and SPDK's "spdk_json_decode_object failed" text.
/// Arrays fail with -32603 whatever `code` is ([`refuse_positional`]).
pub(crate) fn decode_with<T: DeserializeOwned>(params: Option<Value>, code: i32) -> Result<T, RpcError> {
    refuse_positional(&params)?;
    decode(params).map_err(|e| RpcError::new(code, format!("{DECODE_FAILED}: {}", e.message)))
}

/// [`decode_with`] SPDK's code for bdev module decode failures: -32603.
pub(crate) fn decode_internal<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    decode_with(params, INTERNAL_ERROR)
}

/// Refuses any params (SPDK's parameter-free methods); an empty object is tolerated.
pub(crate) fn no_params(params: Option<Value>) -> Result<(), RpcError> {
    match params {
        None => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(RpcError::invalid_params(
            "Invalid parameters: this method requires no parameters",
        )),
    }
}

/// Decodes a handler's params or answers the decode error and returns from the handler:
/// `params!(params, reply)` decodes with [`decode`] (-32602), `params!(params, code, reply)`
/// with [`decode_with`] and that code.
macro_rules! params {
    ($p:expr, $reply:expr) => {
        match $crate::decode::decode($p) {
            Ok(p) => p,
            Err(e) => return $reply(Err(e)),
        }
    };
    ($p:expr, $code:expr, $reply:expr) => {
        match $crate::decode::decode_with($p, $code) {
            Ok(p) => p,
            Err(e) => return $reply(Err(e)),
        }
    };
}
pub(crate) use params;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default)]
        n: u32,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Kill {
        sig_name: String,
        #[serde(default)]
        n: u64,
    }

    #[test]
    fn arrays_are_refused_with_spdks_decode_error() {
        let e = decode::<Kill>(Some(json!(["SIGTERM"]))).unwrap_err();
        assert_eq!(e.code, INTERNAL_ERROR);
        assert!(e.message.starts_with(DECODE_FAILED), "{}", e.message);
        assert!(!e.message.contains("Kill"), "{}", e.message);
        assert_eq!(
            decode_with::<Kill>(Some(json!([])), -32602).unwrap_err().code,
            INTERNAL_ERROR
        );
        assert!(refuse_positional(&Some(json!({}))).is_ok());
        assert!(refuse_positional(&None).is_ok());
    }

    #[test]
    fn messages_name_the_parameter_not_the_type() {
        let e = decode::<Kill>(Some(json!({"sig_name": "SIGTERM", "n": "x"}))).unwrap_err();
        assert!(
            e.message.starts_with("Invalid parameters: n: invalid type: string"),
            "{}",
            e.message
        );
        let e = decode::<Kill>(Some(json!({"n": 1}))).unwrap_err();
        assert!(e.message.contains("missing field `sig_name`"), "{}", e.message);
        assert_eq!(
            plain_reason("invalid length 2, expected struct Kill with 1 element"),
            "invalid length 2, expected an object"
        );
        assert_eq!(
            plain_reason("invalid type: string, expected struct Kill_2 with 3 elements or so"),
            "invalid type: string, expected an object or so"
        );
        assert_eq!(plain_reason("a struct  b"), "a struct  b");
    }

    #[test]
    fn codes_and_messages() {
        assert_eq!(decode::<P>(None).unwrap(), P { n: 0 });
        let e = decode::<P>(Some(json!({"x": 1}))).unwrap_err();
        assert_eq!(e.code, crate::error::INVALID_PARAMS);
        assert!(
            e.message.starts_with("Invalid parameters: unknown field `x`"),
            "{}",
            e.message
        );
        let e = decode_internal::<P>(Some(json!({"n": "a"}))).unwrap_err();
        assert_eq!(e.code, INTERNAL_ERROR);
        assert!(e
            .message
            .starts_with("spdk_json_decode_object failed: Invalid parameters: "));
        assert_eq!(decode_with::<P>(Some(json!(3)), -32700).unwrap_err().code, -32700);
        assert_eq!(
            decode_with::<P>(Some(json!([3])), -32700).unwrap_err().code,
            INTERNAL_ERROR
        );
        assert!(no_params(Some(json!({}))).is_ok());
        assert_eq!(
            no_params(Some(json!([]))).unwrap_err().code,
            crate::error::INVALID_PARAMS
        );
    }

    fn handler(params: Option<Value>, reply: impl FnOnce(Result<Value, RpcError>)) {
        let p: P = params!(params, -32700, reply);
        reply(Ok(json!(p.n)))
    }

    #[test]
    fn params_macro_answers_the_error_and_returns() {
        let mut got = None;
        handler(Some(json!({"n": 4})), |r| got = Some(r));
        assert_eq!(got.take().unwrap().unwrap(), json!(4));
        handler(Some(json!({"n": -1})), |r| got = Some(r));
        assert_eq!(got.take().unwrap().unwrap_err().code, -32700);
    }
}
