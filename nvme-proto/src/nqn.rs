//! NVMe Qualified Names and the fixed-size text fields of NVMe structures.
//!
//! An NQN names a host or an NVM subsystem: at most 223 bytes of UTF-8, either
//! `nqn.2014-08.org.nvmexpress:uuid:` followed by a UUID in its 36-character form, or
//! `nqn.yyyy-mm.<reverse domain>:<anything>` — the date says when the naming authority owned the
//! domain. The discovery subsystem's well-known name [`DISCOVERY_NQN`] is the one name without a
//! `:` part. [`validate`] follows the rules SPDK applies when a subsystem or host is configured
//! (the month is not range-checked, labels of the reverse domain start with a letter and hold
//! letters, digits and inner hyphens), so a name SPDK's `rpc.py` accepts is accepted here.
//!
//! On the wire an NQN sits in a 256-byte field, NUL-terminated ([`NqnField`]). Decoders check
//! only the termination: a target compares what a host sent with its configured names, and a
//! name that fails [`validate`] simply matches nothing. Other text fields (serial number, model,
//! firmware revision, transport addresses) are fixed arrays padded with spaces or NULs
//! ([`FixedText`]).

use crate::ProtoError;

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// The prefix of the UUID form, `nqn.2014-08.org.nvmexpress:uuid:<uuid>`.
pub const UUID_NQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

/// Longest NQN in bytes (without the terminating NUL).
pub const NQN_MAX_LEN: usize = 223;

/// Size of the NUL-terminated NQN fields in Connect data, Identify Controller and discovery
/// log entries.
pub const NQN_FIELD_LEN: usize = 256;

/// Which form a valid NQN has. Returned by [`validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NqnKind {
    /// [`DISCOVERY_NQN`].
    Discovery,
    /// `nqn.2014-08.org.nvmexpress:uuid:<uuid>`.
    Uuid,
    /// `nqn.yyyy-mm.<reverse domain>:<name>`.
    Named,
}

const fn bad(reason: &'static str) -> ProtoError {
    ProtoError::Nqn { reason }
}

/// Checks that `nqn` is a well-formed NQN and says which form it has. Called on the control
/// plane when subsystems and hosts are configured and by an initiator before it connects.
pub fn validate(nqn: &str) -> Result<NqnKind, ProtoError> {
    let b = nqn.as_bytes();
    if b.len() > NQN_MAX_LEN {
        return Err(bad("longer than 223 bytes"));
    }
    if b.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    if nqn == DISCOVERY_NQN {
        return Ok(NqnKind::Discovery);
    }
    if let Some(uuid) = nqn.strip_prefix(UUID_NQN_PREFIX) {
        return if is_uuid(uuid) {
            Ok(NqnKind::Uuid)
        } else {
            Err(bad("the uuid form needs a 36-character UUID"))
        };
    }
    if !nqn.starts_with("nqn.") {
        return Err(bad("does not start with \"nqn.\""));
    }
    let date_ok = matches!(b.get(4..12), Some([y0, y1, y2, y3, b'-', m0, m1, b'.'])
        if [y0, y1, y2, y3, m0, m1].iter().all(|c| c.is_ascii_digit()));
    if !date_ok {
        return Err(bad("the date after \"nqn.\" must be yyyy-mm."));
    }
    let rest = &nqn[12..];
    let Some((domain, name)) = rest.split_once(':') else {
        return Err(bad("needs a ':' between the reverse domain and the name"));
    };
    if name.is_empty() {
        return Err(bad("the name after ':' is empty"));
    }
    if domain.is_empty() {
        return Err(bad("the reverse domain is empty"));
    }
    for label in domain.split('.') {
        let lb = label.as_bytes();
        match (lb.first(), lb.last()) {
            (Some(first), Some(last)) => {
                if !first.is_ascii_alphabetic() {
                    return Err(bad("a domain label must start with a letter"));
                }
                if !last.is_ascii_alphanumeric() {
                    return Err(bad("a domain label must end with a letter or digit"));
                }
                if lb.len() > 63 {
                    return Err(bad("a domain label is longer than 63 characters"));
                }
                if !lb.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
                    return Err(bad(
                        "a domain label holds a character other than letters, digits and '-'",
                    ));
                }
            }
            _ => return Err(bad("the reverse domain has an empty label")),
        }
    }
    Ok(NqnKind::Named)
}

/// True if `s` is a UUID in its 8-4-4-4-12 hexadecimal form.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A 256-byte NUL-terminated NQN field as it appears on the wire (Connect data SUBNQN/HOSTNQN,
/// Identify Controller SUBNQN, discovery log SUBNQN). Stack-only and `Copy`; built by the side
/// that encodes, returned by decoders.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NqnField {
    bytes: [u8; NQN_FIELD_LEN],
}

impl Default for NqnField {
    fn default() -> Self {
        NqnField {
            bytes: [0; NQN_FIELD_LEN],
        }
    }
}

impl std::fmt::Debug for NqnField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NqnField({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl NqnField {
    /// A field holding `nqn`, which must pass [`validate`]. Used by encoders (an initiator's
    /// Connect, a target's Identify and discovery entries).
    pub fn new(nqn: &str) -> Result<Self, ProtoError> {
        validate(nqn)?;
        Self::new_unchecked_format(nqn.as_bytes())
    }

    /// A field holding `bytes` without checking the NQN format: only that it fits with its NUL
    /// (at most 255 bytes) and holds no NUL. For peers whose names do not follow the format.
    pub fn new_unchecked_format(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() >= NQN_FIELD_LEN {
            return Err(bad("does not fit a 256-byte field with its NUL"));
        }
        if bytes.contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        let mut f = NqnField::default();
        f.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(f)
    }

    /// Decodes the 256-byte field at the start of `raw`; `Err` unless it is NUL-terminated.
    /// `what`/`offset` name the field in the error (Connect's IPO comes from `offset`).
    pub(crate) fn decode_at(
        raw: &[u8; NQN_FIELD_LEN],
        what: &'static str,
        field: &'static str,
        offset: usize,
    ) -> Result<Self, ProtoError> {
        if !raw.contains(&0) {
            return Err(ProtoError::field(
                what,
                field,
                offset,
                crate::Expected::Text("a NUL-terminated NQN"),
                0,
            ));
        }
        let mut f = NqnField { bytes: *raw };
        // Normalise what follows the terminator so equal names compare equal.
        let len = f.len();
        f.bytes[len..].fill(0);
        Ok(f)
    }

    /// Decodes a field that need not be terminated (Identify and discovery data read by a host:
    /// a missing NUL there is the peer's problem, the name is just cut at 256 bytes).
    pub(crate) fn decode_lenient(raw: &[u8; NQN_FIELD_LEN]) -> Self {
        let mut f = NqnField { bytes: *raw };
        let len = f.len();
        f.bytes[len..].fill(0);
        f
    }

    fn len(&self) -> usize {
        self.bytes.iter().position(|&c| c == 0).unwrap_or(NQN_FIELD_LEN)
    }

    /// The name's bytes, up to the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    /// The name as text, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// Checks the name against the NQN rules ([`validate`]).
    pub fn validate(&self) -> Result<NqnKind, ProtoError> {
        self.as_str().ok_or(bad("not UTF-8")).and_then(validate)
    }

    /// The whole 256-byte field as it goes on the wire.
    pub fn raw(&self) -> &[u8; NQN_FIELD_LEN] {
        &self.bytes
    }
}

/// A fixed-size text field padded to `N` bytes: ASCII space-padded (SN, MN, FR of Identify
/// Controller; [`FixedText::space_padded`]) or NUL-padded (TRSVCID, TRADDR of a discovery entry;
/// [`FixedText::nul_padded`]). `Copy`, stack-only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FixedText<const N: usize> {
    bytes: [u8; N],
}

impl<const N: usize> Default for FixedText<N> {
    fn default() -> Self {
        FixedText { bytes: [0; N] }
    }
}

impl<const N: usize> std::fmt::Debug for FixedText<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.trimmed()))
    }
}

impl<const N: usize> FixedText<N> {
    fn padded(text: &str, pad: u8, what: &'static str) -> Result<Self, ProtoError> {
        let b = text.as_bytes();
        if b.len() > N {
            return Err(ProtoError::field(
                what,
                "text",
                0,
                crate::Expected::AtMost(N as u64),
                b.len() as u64,
            ));
        }
        let mut bytes = [pad; N];
        bytes[..b.len()].copy_from_slice(b);
        Ok(FixedText { bytes })
    }

    /// `text` followed by spaces, as Identify's SN/MN/FR want it; `Err` if longer than `N`.
    pub fn space_padded(text: &str) -> Result<Self, ProtoError> {
        Self::padded(text, b' ', "space-padded text")
    }

    /// `text` followed by NULs, as discovery entries' TRSVCID/TRADDR want it; `Err` if longer
    /// than `N`.
    pub fn nul_padded(text: &str) -> Result<Self, ProtoError> {
        Self::padded(text, 0, "NUL-padded text")
    }

    /// The field exactly as on the wire.
    pub const fn from_raw(bytes: [u8; N]) -> Self {
        FixedText { bytes }
    }

    /// The field as it goes on the wire.
    pub const fn raw(&self) -> &[u8; N] {
        &self.bytes
    }

    /// The text up to the first NUL, without trailing spaces.
    pub fn trimmed(&self) -> &[u8] {
        let end = self.bytes.iter().position(|&c| c == 0).unwrap_or(N);
        let t = &self.bytes[..end];
        let keep = t.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
        &t[..keep]
    }

    /// [`FixedText::trimmed`] as text, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.trimmed()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        assert_eq!(validate(DISCOVERY_NQN), Ok(NqnKind::Discovery));
        assert_eq!(validate("nqn.2016-06.io.spdk:cnode1"), Ok(NqnKind::Named));
        assert_eq!(
            validate("nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"),
            Ok(NqnKind::Uuid)
        );
        assert_eq!(validate("nqn.2019-08.org.qemu:LABNVME0"), Ok(NqnKind::Named));
        assert_eq!(validate("nqn.2024-01.a-b.c9:ünïcode name"), Ok(NqnKind::Named));
        let long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(NQN_MAX_LEN - 20));
        assert_eq!(long.len(), NQN_MAX_LEN);
        assert_eq!(validate(&long), Ok(NqnKind::Named));
    }

    #[test]
    fn invalid_names() {
        let too_long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(NQN_MAX_LEN - 19));
        for (nqn, why) in [
            (too_long.as_str(), "longer"),
            ("iqn.2016-06.io.spdk:a", "nqn."),
            ("nqn.16-06.io.spdk:a", "yyyy-mm"),
            ("nqn.2016-06io.spdk:a", "yyyy-mm"),
            ("nqn.2016-06.io.spdk", "':'"),
            ("nqn.2016-06.io.spdk:", "empty"),
            ("nqn.2016-06.:a", "empty"),
            ("nqn.2016-06.1o.spdk:a", "start with a letter"),
            ("nqn.2016-06.io-.spdk:a", "end with"),
            ("nqn.2016-06.io..spdk:a", "empty label"),
            ("nqn.2016-06.i_o.spdk:a", "character"),
            (
                "nqn.2014-08.org.nvmexpress:uuid:1111111-2222-3333-4444-555555555555",
                "UUID",
            ),
            (
                "nqn.2014-08.org.nvmexpress:uuid:1111111g-2222-3333-4444-555555555555",
                "UUID",
            ),
        ] {
            match validate(nqn) {
                Err(ProtoError::Nqn { reason }) => assert!(reason.contains(why), "{nqn}: {reason}"),
                other => panic!("{nqn}: {other:?}"),
            }
        }
    }

    #[test]
    fn nqn_field_round_trip() {
        let f = NqnField::new("nqn.2016-06.io.spdk:cnode1").unwrap();
        assert_eq!(f.as_str(), Some("nqn.2016-06.io.spdk:cnode1"));
        assert_eq!(f.raw()[26], 0);
        let again = NqnField::decode_at(f.raw(), "t", "SUBNQN", 256).unwrap();
        assert_eq!(again, f);
        assert!(NqnField::new("bogus").is_err());
        assert!(NqnField::new_unchecked_format(&[b'a'; 256]).is_err());
        assert!(NqnField::new_unchecked_format(b"a\0b").is_err());
        let unterminated = [b'a'; 256];
        assert!(matches!(
            NqnField::decode_at(&unterminated, "Connect data", "SUBNQN", 256),
            Err(ProtoError::Field { offset: 256, .. })
        ));
        assert_eq!(NqnField::decode_lenient(&unterminated).as_bytes().len(), 256);
    }

    #[test]
    fn fixed_text() {
        let sn = FixedText::<20>::space_padded("KEEL0001").unwrap();
        assert_eq!(&sn.raw()[..10], b"KEEL0001  ");
        assert_eq!(sn.as_str(), Some("KEEL0001"));
        let port = FixedText::<32>::nul_padded("4420").unwrap();
        assert_eq!(port.raw()[4], 0);
        assert_eq!(port.as_str(), Some("4420"));
        assert!(FixedText::<4>::space_padded("12345").is_err());
        assert_eq!(FixedText::<4>::from_raw(*b"a b ").trimmed(), b"a b");
    }
}
