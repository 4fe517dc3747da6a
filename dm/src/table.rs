//! Tables: dmsetup text → validated, immutable [`Table`] (spec §2).
//!
//! Two stages, both on the control path:
//!
//! 1. [`parse`] — lexical and ordering rules that need no device: one target per line
//!    (`<start> <length> <type> <args…>`, whitespace-separated, backslash escapes the next
//!    character, blank lines and `#` comments skipped), decimal numbers with no junk, length > 0,
//!    the first target at 0 and each one starting where the previous ended ("Gap in table" for a
//!    hole or an overlap), a known target type, and a table end whose byte count fits a u64.
//! 2. [`build`] — the constructors parse each line's arguments (resolving and claiming bdevs
//!    through a [`DevSource`]), then the device-level rules: the logical block size is the largest
//!    of the named bdevs' (512 without any); every target's start and length, and every device
//!    offset, are aligned to the relevant block size; every mapped range lies inside its bdev;
//!    striped chunks are at least one logical block; singleton types stand alone.
//!
//! Every error is a [`DmError::Table`] naming the 1-based line and the field — `field 5
//! <chunk_sectors> '96'` — with Linux's reason text where Linux has one.

use std::fmt::Write;
use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp};
use keel_reactor::ticks;

use crate::device::Claim;
use crate::error::DmError;
use crate::events::Events;
use crate::target::{
    find_type, intersect, ArgError, CtorArgs, DevGeometry, DevIndex, DevNames, DevSource, Target, TargetType,
    TypeFlags, SECTOR_BYTES,
};

/// One parsed line, before its arguments are interpreted.
#[derive(Debug, Clone)]
pub struct LineSpec {
    /// 1-based line number in the text.
    pub line: usize,
    pub start_sectors: u64,
    pub len_sectors: u64,
    pub ttype: &'static TargetType,
    /// Arguments with escapes removed.
    pub args: Vec<String>,
}

/// Splits a line into words: whitespace separates, a backslash makes the next character literal.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
                has = true;
            }
        } else if c.is_whitespace() {
            if has {
                out.push(std::mem::take(&mut cur));
                has = false;
            }
        } else {
            cur.push(c);
            has = true;
        }
    }
    if has {
        out.push(cur);
    }
    out
}

fn table_err(line: usize, field: String, reason: impl Into<String>) -> DmError {
    DmError::Table {
        line,
        field,
        reason: reason.into(),
        errno: libc::EINVAL,
    }
}

/// Decimal, digits only.
fn number(w: &str) -> Option<u64> {
    if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    w.parse().ok()
}

/// Parses table text (stage 1). An empty text (no target lines) parses to an empty list; whether
/// that is allowed is the caller's business (`create` allows it, `load` does not).
pub fn parse(text: &str) -> Result<Vec<LineSpec>, DmError> {
    let mut specs: Vec<LineSpec> = Vec::new();
    let mut next_start = 0u64;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let w = words(raw);
        if w.len() < 3 {
            return Err(table_err(
                line,
                format!("field {}", w.len() + 1),
                "expected <logical_start_sector> <num_sectors> <target_type> <target args...>",
            ));
        }
        let start = number(&w[0]).ok_or_else(|| {
            table_err(
                line,
                format!("field 1 <logical_start_sector> '{}'", w[0]),
                "Invalid device sector",
            )
        })?;
        let len = number(&w[1]).ok_or_else(|| {
            table_err(
                line,
                format!("field 2 <num_sectors> '{}'", w[1]),
                "Invalid device sector",
            )
        })?;
        let ttype = find_type(&w[2]).ok_or_else(|| {
            table_err(
                line,
                format!("field 3 <target_type> '{}'", w[2]),
                format!("{}: unknown target type", w[2]),
            )
        })?;
        if len == 0 {
            return Err(table_err(
                line,
                format!("field 2 <num_sectors> '{}'", w[1]),
                "zero-length target",
            ));
        }
        if start != next_start {
            let prev = if specs.is_empty() {
                "the table must start at sector 0".to_string()
            } else {
                format!("the previous target ends at sector {next_start}")
            };
            return Err(table_err(
                line,
                format!("field 1 <logical_start_sector> '{}'", w[0]),
                format!("{}: Gap in table ({prev})", ttype.name),
            ));
        }
        next_start = start
            .checked_add(len)
            .filter(|end| end.checked_mul(SECTOR_BYTES).is_some())
            .ok_or_else(|| {
                table_err(
                    line,
                    format!("field 2 <num_sectors> '{}'", w[1]),
                    "table end overflows: a device is at most 2^64 bytes",
                )
            })?;
        specs.push(LineSpec {
            line,
            start_sectors: start,
            len_sectors: len,
            ttype,
            args: w[3..].to_vec(),
        });
    }
    Ok(specs)
}

/// A device of a table: what the line named, its geometry and (in a real table) the shared dm
/// claim on it.
#[derive(Clone)]
pub struct TableDev {
    /// The name as written in the table.
    pub name: String,
    pub geometry: DevGeometry,
    pub(crate) claim: Option<Arc<Claim>>,
}

impl TableDev {
    /// A device with no bdev behind it (tables built in pure tests: nothing is claimed).
    pub fn detached(name: &str, geometry: DevGeometry) -> TableDev {
        TableDev {
            name: name.to_string(),
            geometry,
            claim: None,
        }
    }

    /// Whether the bdev behind this device was removed (hot removal) after the table named it.
    /// Never for a detached device.
    pub fn is_removed(&self) -> bool {
        self.claim.as_ref().is_some_and(|c| c.desc.bdev().is_removed())
    }

    /// Whether this device is `bdev` (the very bdev, not one that took its name later).
    pub(crate) fn is_bdev(&self, bdev: &Arc<keel_bdev::Bdev>) -> bool {
        self.claim.as_ref().is_some_and(|c| Arc::ptr_eq(c.desc.bdev(), bdev))
    }

    /// The bdev's current name (the table's word when no bdev is behind it).
    pub fn current_name(&self) -> String {
        match &self.claim {
            Some(c) => c.desc.bdev().name().to_string(),
            None => self.name.clone(),
        }
    }
}

/// One target of a built table.
pub struct TableLine {
    pub line: usize,
    pub start_sectors: u64,
    pub len_sectors: u64,
    pub ttype: &'static TargetType,
    pub target: Arc<dyn Target>,
}

/// A validated, immutable table. Built on the control path, shared by every core.
pub struct Table {
    pub lines: Vec<TableLine>,
    pub devs: Vec<TableDev>,
    /// The device's logical block size: the largest of its bdevs', 512 without any.
    pub block_size: u32,
    pub size_sectors: u64,
    /// Ops the device supports: what every target supports, plus flush and reset (fanned out).
    pub caps: IoCaps,
    pub readonly: bool,
    /// Ticks at load.
    pub loaded_ticks: u64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({})", self.table_text().trim_end())
    }
}

/// Resolves a bdev name for a table: the device, or why not (reason, positive errno).
pub type Resolver<'a> = dyn FnMut(&str) -> Result<TableDev, (String, i32)> + 'a;

/// A [`DevSource`] over a resolver function, collecting the table's devices.
pub struct Devices<'a> {
    resolve: &'a mut Resolver<'a>,
    list: Vec<TableDev>,
}

impl<'a> Devices<'a> {
    /// Devices resolved by `resolve` (which opens/claims in a real table).
    pub fn new(resolve: &'a mut Resolver<'a>) -> Devices<'a> {
        Devices {
            resolve,
            list: Vec::new(),
        }
    }
}

impl DevSource for Devices<'_> {
    fn resolve(&mut self, name: &str) -> Result<DevIndex, (String, i32)> {
        if let Some(i) = self.list.iter().position(|d| d.name == name) {
            return Ok(i as DevIndex);
        }
        let d = (self.resolve)(name)?;
        self.list.push(d);
        Ok((self.list.len() - 1) as DevIndex)
    }

    fn geometry(&self, dev: DevIndex) -> DevGeometry {
        self.list[dev as usize].geometry
    }
}

fn arg_field(spec: &LineSpec, e: &ArgError) -> String {
    match e.arg {
        Some(i) => format!(
            "field {} {} '{}'",
            i + 4,
            e.name,
            spec.args.get(i).map(String::as_str).unwrap_or("")
        ),
        None => format!("target '{}'", spec.ttype.name),
    }
}

/// Builds a table (stage 2) from parsed lines. `resolve` turns a bdev name into a [`TableDev`]
/// (opening and claiming it for a real device). Fails on an empty list. Control path.
pub fn build(
    specs: &[LineSpec],
    resolve: &mut Resolver<'_>,
    events: &Arc<Events>,
    readonly: bool,
) -> Result<Table, DmError> {
    if specs.is_empty() {
        return Err(DmError::EmptyTable);
    }
    let mut devs = Devices::new(resolve);
    let mut lines = Vec::with_capacity(specs.len());
    for spec in specs {
        let target = {
            let mut a = CtorArgs {
                len_sectors: spec.len_sectors,
                args: &spec.args,
                events,
                devs: &mut devs,
            };
            (spec.ttype.ctor)(&mut a).map_err(|e| DmError::Table {
                line: spec.line,
                field: arg_field(spec, &e),
                reason: e.reason.clone(),
                errno: e.errno,
            })?
        };
        if spec.ttype.flags.contains(TypeFlags::SINGLETON) && specs.len() > 1 {
            return Err(table_err(
                spec.line,
                format!("field 3 <target_type> '{}'", spec.ttype.name),
                "singleton target type must appear alone in table",
            ));
        }
        if readonly && spec.ttype.flags.contains(TypeFlags::ALWAYS_WRITEABLE) {
            return Err(table_err(
                spec.line,
                format!("field 3 <target_type> '{}'", spec.ttype.name),
                "target type may not be included in a read-only table",
            ));
        }
        lines.push(TableLine {
            line: spec.line,
            start_sectors: spec.start_sectors,
            len_sectors: spec.len_sectors,
            ttype: spec.ttype,
            target,
        });
    }
    let devs = devs.list;
    let block_size = devs.iter().map(|d| d.geometry.block_size).max().unwrap_or(512).max(512);
    let spb = block_size as u64 / SECTOR_BYTES;
    for (spec, l) in specs.iter().zip(&lines) {
        if !l.start_sectors.is_multiple_of(spb) {
            return Err(table_err(
                l.line,
                format!("field 1 <logical_start_sector> '{}'", l.start_sectors),
                format!("start not aligned to the logical block size {block_size} ({spb} sectors)"),
            ));
        }
        if !l.len_sectors.is_multiple_of(spb) {
            return Err(table_err(
                l.line,
                format!("field 2 <num_sectors> '{}'", l.len_sectors),
                format!("length not aligned to the logical block size {block_size} ({spb} sectors)"),
            ));
        }
        if let Some((chunk, arg)) = l.target.split_sectors() {
            if chunk < spb {
                return Err(table_err(
                    l.line,
                    format!("field {} <chunk_sectors> '{}'", arg + 4, chunk),
                    format!(
                        "{}: chunk of {chunk} sectors is smaller than the logical block size {block_size} ({spb} sectors)",
                        l.ttype.name
                    ),
                ));
            }
        }
        for x in l.target.extents() {
            let d = &devs[x.dev as usize];
            let dspb = d.geometry.block_size as u64 / SECTOR_BYTES;
            let arg_word = |i: usize| spec.args.get(i).map(String::as_str).unwrap_or("");
            if !x.offset_sectors.is_multiple_of(dspb) {
                return Err(table_err(
                    l.line,
                    format!("field {} <offset> '{}'", x.arg + 5, arg_word(x.arg + 1)),
                    format!(
                        "{}: start={} not aligned to the logical block size {} of '{}'",
                        l.ttype.name, x.offset_sectors, d.geometry.block_size, d.name
                    ),
                ));
            }
            let end = x.offset_sectors.checked_add(x.len_sectors);
            if end.is_none_or(|e| e > d.geometry.num_sectors) {
                return Err(table_err(
                    l.line,
                    format!("field {} <dev> '{}'", x.arg + 4, arg_word(x.arg)),
                    format!(
                        "{}: {} too small for target: start={}, len={}, dev_size={}",
                        l.ttype.name, d.name, x.offset_sectors, x.len_sectors, d.geometry.num_sectors
                    ),
                ));
            }
        }
    }
    let dev_caps = |i: DevIndex| devs[i as usize].geometry.caps;
    let mut caps = IoCaps::of(&[IoOp::Read, IoOp::Write, IoOp::Unmap, IoOp::WriteZeroes]);
    for l in &lines {
        caps = intersect(caps, l.target.caps(&dev_caps));
    }
    let caps = IoCaps::of(
        &IoOp::ALL
            .into_iter()
            .filter(|&op| matches!(op, IoOp::Flush | IoOp::Reset) || caps.supports(op))
            .collect::<Vec<_>>(),
    );
    let last = lines.last().expect("non-empty");
    let size_sectors = last.start_sectors + last.len_sectors;
    Ok(Table {
        lines,
        devs,
        block_size,
        size_sectors,
        caps,
        readonly,
        loaded_ticks: ticks(),
    })
}

struct Names<'a>(&'a [TableDev]);

/// Device names as table text writes them: a backslash or whitespace in a name is escaped with
/// a backslash, so that [`parse`] reads the same name back (a bdev named `a\b` would otherwise
/// come back as `ab` from save_config).
impl DevNames for Names<'_> {
    fn name(&self, dev: DevIndex) -> String {
        escape_word(&self.0[dev as usize].current_name())
    }
}

/// `word` with `\` and whitespace escaped by a backslash (the inverse of `words`).
fn escape_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c == '\\' || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Table {
    /// Device size in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.size_sectors / (self.block_size as u64 / SECTOR_BYTES)
    }

    /// Index of the target containing `sector` (binary search), `None` past the end.
    pub fn find(&self, sector: u64) -> Option<usize> {
        if sector >= self.size_sectors {
            return None;
        }
        Some(self.lines.partition_point(|l| l.start_sectors <= sector) - 1)
    }

    /// One line per target in the TABLE form, `<start> <len> <type> <args>` (a trailing space
    /// after the type when the args are empty, as dmsetup prints), each ending in a newline.
    pub fn table_text(&self) -> String {
        self.text(|t, n, out| t.table_args(n, out))
    }

    /// The TABLE form for save_config: as [`Table::table_text`], except that a target mapping
    /// onto a bdev that was removed is written as an `error` target of the same extent — the
    /// I/O it fails now, it fails after a reload too, and the table loads without the missing
    /// bdev.
    pub fn config_text(&self) -> String {
        let names = Names(&self.devs);
        let mut out = String::new();
        for l in &self.lines {
            let lost = l
                .target
                .extents()
                .iter()
                .any(|x| self.devs[x.dev as usize].is_removed());
            if lost {
                let _ = write!(out, "{} {} error ", l.start_sectors, l.len_sectors);
            } else {
                let _ = write!(out, "{} {} {} ", l.start_sectors, l.len_sectors, l.ttype.name);
                l.target.table_args(&names, &mut out);
            }
            out.push('\n');
        }
        out
    }

    /// The bdevs this table names that were removed after it was built (current names), each
    /// once: a table with any cannot become live.
    pub fn removed_deps(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for d in self.devs.iter().filter(|d| d.is_removed()) {
            let n = d.current_name();
            if !v.contains(&n) {
                v.push(n);
            }
        }
        v
    }

    /// The bdevs the table uses that are still there (current names), each once.
    pub fn present_deps(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for d in self.devs.iter().filter(|d| !d.is_removed()) {
            let n = d.current_name();
            if !v.contains(&n) {
                v.push(n);
            }
        }
        v
    }

    /// Whether the table names `bdev`.
    pub(crate) fn names_bdev(&self, bdev: &Arc<keel_bdev::Bdev>) -> bool {
        self.devs.iter().any(|d| d.is_bdev(bdev))
    }

    /// The same in the INFO form (`dmsetup status`).
    pub fn status_text(&self) -> String {
        self.text(|t, n, out| t.info(n, out))
    }

    fn text(&self, form: impl Fn(&dyn Target, &dyn DevNames, &mut String)) -> String {
        let names = Names(&self.devs);
        let mut out = String::new();
        for l in &self.lines {
            let _ = write!(out, "{} {} {} ", l.start_sectors, l.len_sectors, l.ttype.name);
            form(&*l.target, &names, &mut out);
            out.push('\n');
        }
        out
    }

    /// The bdevs the table uses (current names), each once, in first-use order.
    pub fn deps(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for d in &self.devs {
            let n = d.current_name();
            if !v.contains(&n) {
                v.push(n);
            }
        }
        v
    }

    /// Read-ahead in sectors as `dmsetup info` shows it: 256, or what a target suggests.
    pub fn read_ahead_sectors(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.target.read_ahead_sectors())
            .max()
            .unwrap_or(0)
            .max(256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_honour_escapes() {
        assert_eq!(words("  0 8  linear a\\ b  3 "), vec!["0", "8", "linear", "a b", "3"]);
        assert_eq!(words("x\\\\y"), vec!["x\\y"]);
        for name in ["a b", "x\\y", "tab\there", "plain", "#x", "\\"] {
            assert_eq!(words(&escape_word(name)), vec![name.to_string()], "{name}");
        }
    }

    #[test]
    fn parse_rules_name_line_and_field() {
        let e = parse("0 8 zero\n10 8 error").unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("field 1") && e.contains("Gap in table"),
            "{e}"
        );
        let e = parse("0 8 zero\n4 8 error").unwrap_err().to_string();
        assert!(e.contains("Gap in table"), "{e}");
        let e = parse("5 8 zero").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("must start at sector 0"), "{e}");
        let e = parse("0 0 zero").unwrap_err().to_string();
        assert!(e.contains("zero-length target"), "{e}");
        let e = parse("0 8x zero").unwrap_err().to_string();
        assert!(e.contains("field 2") && e.contains("Invalid device sector"), "{e}");
        let e = parse("0 8 nosuchtarget").unwrap_err().to_string();
        assert!(e.contains("nosuchtarget: unknown target type"), "{e}");
        let e = parse("0 8").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(parse("\n# comment\n\n").unwrap().is_empty());
        let ok = parse("0 8 zero\n8 8 error\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].line, 2);
    }
}
