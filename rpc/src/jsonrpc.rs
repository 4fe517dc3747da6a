//! JSON-RPC 2.0 framing and envelopes, as SPDK's server does them (`shared/specs/spdk-rpc.md`
//! §2, §4, §7). Pure functions over bytes and values, so the socket code stays thin and this part
//! can be fuzzed.
//!
//! * Framing is by JSON value boundaries, never by newlines: [`Framer`] buffers bytes and yields
//!   each complete top-level value as its exact text; whitespace between values is skipped; an
//!   incomplete value waits for more bytes; a syntax error is fatal for the connection (SPDK
//!   answers -32700 and closes, since there is no point to resynchronise at). A value larger
//!   than [`MAX_REQUEST_BYTES`] is fatal too, however it was chunked: refused as soon as the
//!   incomplete part is over the limit, or when it completes in one read.
//! * [`parse_request`] checks one envelope strictly (allowed keys, `jsonrpc == "2.0"`, string
//!   `method`, object/array/null `params`, string/number/null `id`).
//! * [`response_text`] writes SPDK's compact envelope with ASCII-only output (non-ASCII escaped
//!   as `\uXXXX`, because rpc.py decodes each 4 KiB chunk separately). A numeric id is echoed
//!   with the exact text it came with ([`id_text`]): ids beyond i64/u64 or written as `1.50`
//!   would not survive a round trip through a JSON number. [`encode`] adds the trailing newline
//!   to a value.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{RpcError, INVALID_REQUEST, PARSE_ERROR};

/// SPDK's per-connection receive buffer: a request larger than this is refused.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Outcome of feeding bytes to a [`Framer`].
#[derive(Debug)]
pub enum Frame {
    /// A complete top-level JSON value, as the exact text received (valid JSON).
    Value(Box<RawValue>),
    /// Malformed JSON or an oversized request: answer with this error, then close.
    Fatal(RpcError),
}

impl Frame {
    /// The frame's value parsed (`None` for a fatal frame). Tests and diagnostics.
    pub fn value(&self) -> Option<Value> {
        match self {
            Frame::Value(raw) => serde_json::from_str(raw.get()).ok(),
            Frame::Fatal(_) => None,
        }
    }
}

fn too_large() -> RpcError {
    RpcError::new(
        PARSE_ERROR,
        format!("Parse error: request larger than {MAX_REQUEST_BYTES} bytes"),
    )
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
        let mut it = serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<Box<RawValue>>();
        match it.next() {
            Some(Ok(v)) => {
                let len = it.byte_offset();
                self.buf.drain(..start + len);
                if len > MAX_REQUEST_BYTES {
                    self.buf.clear();
                    return Some(Frame::Fatal(too_large()));
                }
                Some(Frame::Value(v))
            }
            Some(Err(e)) if e.is_eof() => {
                if self.buf.len() - start > MAX_REQUEST_BYTES {
                    self.buf.clear();
                    return Some(Frame::Fatal(too_large()));
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

/// The exact text to echo for a request's id: the wire text of a numeric id (`raw`, when it is
/// one plain JSON number token), else the id's compact ASCII JSON (`null` without one).
pub fn id_text(id: Option<&Value>, raw: Option<&str>) -> String {
    match (id, raw.map(str::trim)) {
        (Some(Value::Number(_)), Some(raw)) if is_number_token(raw) => raw.to_string(),
        (Some(v), _) => compact(v),
        (None, _) => "null".to_string(),
    }
}

/// Whether `t` is one JSON number token (`-`? int frac? exp?), nothing else.
fn is_number_token(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > s
    };
    if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// The raw text of an object's `id` member, if `raw` is an object with one (a duplicated key
/// gives `None`: the parsed value then decides).
pub fn raw_id(raw: &RawValue) -> Option<&str> {
    #[derive(Deserialize)]
    struct IdProbe<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
    }
    serde_json::from_str::<IdProbe>(raw.get()).ok()?.id.map(RawValue::get)
}

/// One response object as compact ASCII text (no newline), with `id_text` (from [`id_text`])
/// written verbatim as its id. The result is serialised once, straight into the answer.
pub fn response_text(id_text: &str, result: Result<Value, RpcError>) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id_text.as_bytes());
    match result {
        Ok(v) => {
            out.extend_from_slice(b",\"result\":");
            compact_into(&mut out, &v);
        }
        Err(e) => {
            let mut err = Map::new();
            err.insert("code".into(), Value::from(e.code));
            err.insert("message".into(), Value::String(e.message));
            out.extend_from_slice(b",\"error\":");
            compact_into(&mut out, &Value::Object(err));
        }
    }
    out.push(b'}');
    ascii_string(out)
}

/// Compact, ASCII-only text of `v` plus `\n`.
pub fn encode(v: &Value) -> String {
    let mut out = Vec::new();
    compact_into(&mut out, v);
    out.push(b'\n');
    ascii_string(out)
}

/// Compact, ASCII-only text of `v`.
fn compact(v: &Value) -> String {
    let mut out = Vec::new();
    compact_into(&mut out, v);
    ascii_string(out)
}

/// Appends the compact, ASCII-only text of `v` to `out` in one pass: non-ASCII characters (only
/// ever inside strings) become `\u` escapes, UTF-16 surrogate pairs above the BMP.
fn compact_into(out: &mut Vec<u8>, v: &Value) {
    let mut ser = serde_json::Serializer::with_formatter(out, AsciiFormatter);
    v.serialize(&mut ser).expect("a Value always serialises into memory");
}

/// The bytes [`compact_into`] wrote: ASCII by construction.
fn ascii_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("the ASCII formatter writes ASCII only")
}

/// serde_json's compact formatter, except that string fragments are written ASCII-only.
struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The next frame's parsed value; `Some(None)` for a fatal frame.
    fn next(f: &mut Framer) -> Option<Option<Value>> {
        f.next_frame().map(|fr| fr.value())
    }

    #[test]
    fn frames_by_value_boundaries() {
        let mut f = Framer::default();
        f.push(b"  {\"method\":\n \"a\"");
        assert_eq!(next(&mut f), None);
        f.push(b", \"id\": 1}{\"method\":\"b\"} [1");
        assert_eq!(next(&mut f), Some(Some(json!({"method": "a", "id": 1}))));
        assert_eq!(next(&mut f), Some(Some(json!({"method": "b"}))));
        assert_eq!(next(&mut f), None);
        f.push(b"]\n");
        assert_eq!(next(&mut f), Some(Some(json!([1]))));
        assert_eq!(next(&mut f), None);
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

    /// A complete request over the limit is refused whether it arrives in one read or many;
    /// one at the limit passes either way.
    #[test]
    fn the_size_limit_does_not_depend_on_chunking() {
        let request = |len: usize| {
            let head = b"{\"method\":\"m\",\"params\":{\"p\":\"";
            let tail = b"\"}}";
            let mut v = head.to_vec();
            v.resize(len - tail.len(), b'x');
            v.extend_from_slice(tail);
            v
        };
        for (len, ok) in [(MAX_REQUEST_BYTES, true), (MAX_REQUEST_BYTES + 1, false)] {
            let bytes = request(len);
            for chunk in [bytes.len(), 64 * 1024, 4096, 1000] {
                let mut f = Framer::default();
                let mut got = None;
                for piece in bytes.chunks(chunk) {
                    f.push(piece);
                    if let Some(fr) = f.next_frame() {
                        got = Some(fr);
                        break;
                    }
                }
                match got {
                    Some(Frame::Value(_)) => assert!(ok, "{len} bytes in chunks of {chunk} accepted"),
                    Some(Frame::Fatal(e)) => {
                        assert!(!ok, "{len} bytes in chunks of {chunk} refused: {e}");
                        assert!(e.message.contains("larger than"), "{}", e.message);
                    }
                    None => panic!("{len} bytes in chunks of {chunk}: no frame"),
                }
            }
        }
    }

    #[test]
    fn numeric_ids_are_echoed_verbatim() {
        for raw in [
            "1",
            "-9223372036854775809",
            "18446744073709551616",
            "123456789012345678901234567890",
            "1.50",
            "-0",
        ] {
            let text = format!("{{\"method\":\"m\",\"id\": {raw} }}");
            let rv: Box<RawValue> = serde_json::from_str(&text).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            let req = parse_request(v).unwrap();
            let id = id_text(req.id.as_ref(), raw_id(&rv));
            assert_eq!(id, raw);
            let out = response_text(&id, Ok(json!(true)));
            assert_eq!(out, format!("{{\"jsonrpc\":\"2.0\",\"id\":{raw},\"result\":true}}"));
        }
        assert_eq!(id_text(Some(&json!("\u{e9}")), Some("\"\u{e9}\"")), "\"\\u00e9\"");
        assert_eq!(id_text(None, None), "null");
        assert_eq!(id_text(Some(&json!(5)), Some("5 ,")), "5");
        for bad in ["", "-", "1.", ".5", "1e", "01x", "1 2"] {
            assert!(!is_number_token(bad), "{bad}");
        }
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

    proptest::proptest! {
        /// Any strings (keys and values, control characters, quotes, non-ASCII) come out ASCII
        /// and decode to the same value; ASCII-only text is exactly serde_json's compact form.
        #[test]
        fn ascii_text_round_trips(k in "\\PC{0,12}", v in "(\\PC|[\"\\\\\u{0}-\u{1f}]){0,24}") {
            let val = json!({k.clone(): [v.clone(), 1, null, {"x": v.clone()}]});
            let text = compact(&val);
            proptest::prop_assert!(text.is_ascii());
            let back: Value = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(&back, &val);
            if k.is_ascii() && v.is_ascii() {
                proptest::prop_assert_eq!(text, serde_json::to_string(&val).unwrap());
            }
        }
    }

    #[test]
    fn encodes_compact_ascii_with_newline() {
        let r = response(Some(json!(1)), Ok(json!({"n": "Malloc\u{e9}\u{1f600}"})));
        let s = encode(&r);
        assert_eq!(
            format!("{}\n", response_text("1", Ok(json!({"n": "Malloc\u{e9}\u{1f600}"})))),
            s
        );
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
