//! JSON-RPC 2.0 framing and envelopes, as SPDK's server does them (`shared/specs/spdk-rpc.md`
//! §2, §4, §7). Pure functions over bytes and values, so the socket code stays thin and this part
//! can be fuzzed.
//!
//! * Framing is by JSON value boundaries, never by newlines: [`Framer`] buffers bytes and yields
//!   each complete top-level value; whitespace between values is skipped; an incomplete value
//!   waits for more bytes; a syntax error is fatal for the connection (SPDK answers -32700 and
//!   closes, since there is no point to resynchronise at).
//! * [`parse_request`] checks one envelope strictly (allowed keys, `jsonrpc == "2.0"`, string
//!   `method`, object/array/null `params`, string/number/null `id`).
//! * [`encode`] writes SPDK's compact envelope with ASCII-only output (non-ASCII escaped as
//!   `\uXXXX`, because rpc.py decodes each 4 KiB chunk separately) and a trailing newline.

use serde_json::{Map, Value};

use crate::error::{RpcError, INVALID_REQUEST, PARSE_ERROR};

/// SPDK's per-connection receive buffer: a request larger than this is refused.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Outcome of feeding bytes to a [`Framer`].
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A complete top-level JSON value.
    Value(Value),
    /// Malformed JSON or an oversized request: answer with this error, then close.
    Fatal(RpcError),
}

/// Splits a byte stream into top-level JSON values. One per connection.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet consumed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete value, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let start = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        if start == self.buf.len() {
            self.buf.clear();
            return None;
        }
        let mut it = serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = start + it.byte_offset();
                self.buf.drain(..used);
                Some(Frame::Value(v))
            }
            Some(Err(e)) if e.is_eof() => {
                if self.buf.len() > MAX_REQUEST_BYTES {
                    self.buf.clear();
                    return Some(Frame::Fatal(RpcError::new(
                        PARSE_ERROR,
                        "Parse error: request too large",
                    )));
                }
                None
            }
            Some(Err(_)) => {
                self.buf.clear();
                Some(Frame::Fatal(RpcError::new(PARSE_ERROR, "Parse error")))
            }
            None => None,
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// `None` when absent or `null`.
    pub params: Option<Value>,
    /// `None` for a notification (no id, or `id: null`).
    pub id: Option<Value>,
}

/// Validates one request object. On failure returns the error response to send (with the id
/// if one could be read, else null).
pub fn parse_request(v: Value) -> Result<Request, (Option<Value>, RpcError)> {
    let invalid = |id: Option<Value>| (id, RpcError::new(INVALID_REQUEST, "Invalid request"));
    let Value::Object(mut m) = v else {
        return Err(invalid(None));
    };
    let id = match m.remove("id") {
        None | Some(Value::Null) => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => return Err(invalid(None)),
    };
    if m.keys().any(|k| !matches!(k.as_str(), "jsonrpc" | "method" | "params")) {
        return Err(invalid(id));
    }
    match m.remove("jsonrpc") {
        None => {}
        Some(Value::String(s)) if s == "2.0" => {}
        Some(_) => return Err(invalid(id)),
    }
    let method = match m.remove("method") {
        Some(Value::String(s)) => s,
        _ => return Err(invalid(id)),
    };
    let params = match m.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return Err(invalid(id)),
    };
    Ok(Request { method, params, id })
}

/// The response object for `id` (null when `None`) with a result or an error.
pub fn response(id: Option<Value>, result: Result<Value, RpcError>) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), Value::String("2.0".into()));
    m.insert("id".into(), id.unwrap_or(Value::Null));
    match result {
        Ok(v) => {
            m.insert("result".into(), v);
        }
        Err(e) => {
            let mut err = Map::new();
            err.insert("code".into(), Value::from(e.code));
            err.insert("message".into(), Value::String(e.message));
            m.insert("error".into(), Value::Object(err));
        }
    }
    Value::Object(m)
}

/// Compact, ASCII-only text of `v` plus `\n`.
pub fn encode(v: &Value) -> String {
    let text = serde_json::to_string(v).expect("a Value always serialises");
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // Non-ASCII only occurs inside strings, where \u escapes are valid.
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_by_value_boundaries() {
        let mut f = Framer::default();
        f.push(b"  {\"method\":\n \"a\"");
        assert_eq!(f.next_frame(), None);
        f.push(b", \"id\": 1}{\"method\":\"b\"} [1");
        assert_eq!(f.next_frame(), Some(Frame::Value(json!({"method": "a", "id": 1}))));
        assert_eq!(f.next_frame(), Some(Frame::Value(json!({"method": "b"}))));
        assert_eq!(f.next_frame(), None);
        f.push(b"]\n");
        assert_eq!(f.next_frame(), Some(Frame::Value(json!([1]))));
        assert_eq!(f.next_frame(), None);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn syntax_errors_and_oversized_requests_are_fatal() {
        let mut f = Framer::default();
        f.push(b"{\"a\" 1}");
        assert!(matches!(f.next_frame(), Some(Frame::Fatal(e)) if e.code == PARSE_ERROR));
        let mut f = Framer::default();
        f.push(b"[");
        f.push(&vec![b' '; MAX_REQUEST_BYTES + 1]);
        assert!(matches!(f.next_frame(), Some(Frame::Fatal(_))));
    }

    #[test]
    fn envelope_validation() {
        let ok = parse_request(json!({"jsonrpc": "2.0", "method": "m", "id": "x", "params": {"a": 1}})).unwrap();
        assert_eq!(ok.id, Some(json!("x")));
        assert_eq!(
            parse_request(json!({"method": "m", "params": null})).unwrap().params,
            None
        );
        for bad in [
            json!(1),
            json!({"id": 1}),
            json!({"method": 3, "id": 1}),
            json!({"method": "m", "jsonrpc": "1.0", "id": 1}),
            json!({"method": "m", "params": 5, "id": 1}),
            json!({"method": "m", "extra": 1, "id": 1}),
            json!({"method": "m", "id": [1]}),
        ] {
            let (_, e) = parse_request(bad.clone()).unwrap_err();
            assert_eq!(e.code, INVALID_REQUEST, "{bad}");
        }
        let (id, _) = parse_request(json!({"method": "m", "extra": 1, "id": 7})).unwrap_err();
        assert_eq!(id, Some(json!(7)));
    }

    #[test]
    fn encodes_compact_ascii_with_newline() {
        let r = response(Some(json!(1)), Ok(json!({"n": "Malloc\u{e9}\u{1f600}"})));
        let s = encode(&r);
        assert_eq!(
            s,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"n\":\"Malloc\\u00e9\\ud83d\\ude00\"}}\n"
        );
        assert!(s.is_ascii());
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["result"]["n"], "Malloc\u{e9}\u{1f600}");
        let e = encode(&response(None, Err(RpcError::new(-32601, "Method not found"))));
        assert_eq!(
            e,
            "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}\n"
        );
    }
}
