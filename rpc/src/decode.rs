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

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::{RpcError, INTERNAL_ERROR};

/// Decodes `params` into `T`, refusing unknown keys and wrong types with -32602 and serde's
/// description of the problem. Absent params decode as `{}`.
pub(crate) fn decode<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let v = params.unwrap_or_else(|| json!({}));
    serde_json::from_value(v).map_err(|e| RpcError::invalid_params(format!("Invalid parameters: {e}")))
}

/// Like [`decode`] but failing with `code` and SPDK's "spdk_json_decode_object failed" text.
pub(crate) fn decode_with<T: DeserializeOwned>(params: Option<Value>, code: i32) -> Result<T, RpcError> {
    decode(params).map_err(|e| RpcError::new(code, format!("spdk_json_decode_object failed: {}", e.message)))
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
