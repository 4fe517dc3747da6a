//! SPDK's log control methods: `log_set_level` / `log_get_level`, `log_set_print_level` /
//! `log_get_print_level`, `log_set_flag` / `log_clear_flag` / `log_get_flags`, mapped onto
//! Keel's `tracing` output.
//!
//! # The mapping
//!
//! SPDK has two thresholds — the *log level* (what goes to syslog) and the *print level* (what
//! also goes to the console) — over its levels ERROR, WARNING, NOTICE, INFO, DEBUG, plus named
//! *flags* that turn on a component's debug messages. Keel writes one stream (stderr) through
//! `tracing`, whose levels are ERROR, WARN, INFO, DEBUG, TRACE. So:
//!
//! * Both thresholds are kept and reported as SPDK spells them, and stderr shows every message
//!   that passes *either* (Keel has no syslog: a message SPDK would log there is printed). SPDK
//!   levels map to `tracing` ones as ERROR→error, WARNING→warn, NOTICE and INFO→info,
//!   DEBUG→debug.
//! * A flag is a name for some of Keel's `tracing` targets ([`FLAGS`]): `bdev` is the bdev layer,
//!   `bdev_raid` and `md` are md, `vbdev_split` the split module, and so on. A set flag shows
//!   its targets' messages down to DEBUG whatever the levels are; `all` sets or clears every
//!   flag, as in SPDK. An unknown flag is refused naming the known ones (SPDK ignores it
//!   silently; a typo then looks like a working flag).
//!
//! The application owns the `tracing` subscriber and gives the methods a [`LogControl`] whose
//! hook installs a new filter (keel-tgt reloads its `EnvFilter`); a program that gave none
//! (keel-perf) answers these methods with an error saying so. Control path; the state sits
//! behind a mutex no I/O touches.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{decode_internal, no_params};
use crate::error::{RpcError, INTERNAL_ERROR, INVALID_PARAMS};
use crate::table::{method, Table};

/// The log methods.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(log_set_print_level, Both),
        method!(log_get_print_level, Both),
        method!(log_set_level, Both),
        method!(log_get_level, Both),
        method!(log_set_flag, Both),
        method!(log_clear_flag, Both),
        method!(log_get_flags, Both),
    ],
    subsystem: None,
};

/// Log flags and the `tracing` targets each one turns on (SPDK's flag names where SPDK has
/// the component).
pub const FLAGS: &[(&str, &[&str])] = &[
    ("app_rpc", &["keel_rpc::framework", "keel_tgt"]),
    ("bdev", &["keel_bdev"]),
    ("bdev_malloc", &["keel_bdev::modules::malloc", "keel_bdev::ram"]),
    ("bdev_null", &["keel_bdev::modules::null"]),
    ("bdev_raid", &["keel_md"]),
    ("bdev_uring", &["keel_bdev::modules::uring"]),
    ("dm", &["keel_dm"]),
    ("md", &["keel_md"]),
    ("nbd", &["keel_nbd"]),
    ("reactor", &["keel_reactor"]),
    ("rpc", &["keel_rpc"]),
    ("vbdev_delay", &["keel_bdev::modules::delay"]),
    ("vbdev_error", &["keel_bdev::modules::error"]),
    ("vbdev_passthru", &["keel_bdev::modules::passthru"]),
    ("vbdev_split", &["keel_bdev::modules::split"]),
];

/// An SPDK log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpdkLevel {
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

impl SpdkLevel {
    /// Parses SPDK's names (case-insensitive, as SPDK).
    pub fn parse(s: &str) -> Option<SpdkLevel> {
        Some(match s.to_ascii_uppercase().as_str() {
            "ERROR" => SpdkLevel::Error,
            "WARNING" => SpdkLevel::Warning,
            "NOTICE" => SpdkLevel::Notice,
            "INFO" => SpdkLevel::Info,
            "DEBUG" => SpdkLevel::Debug,
            _ => return None,
        })
    }

    /// The level of a `tracing` filter word (`-L warn`); `None` for anything else.
    pub fn from_tracing(s: &str) -> Option<SpdkLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => SpdkLevel::Error,
            "warn" => SpdkLevel::Warning,
            "info" => SpdkLevel::Notice,
            "debug" | "trace" => SpdkLevel::Debug,
            _ => return None,
        })
    }

    /// SPDK's name.
    pub fn name(self) -> &'static str {
        match self {
            SpdkLevel::Error => "ERROR",
            SpdkLevel::Warning => "WARNING",
            SpdkLevel::Notice => "NOTICE",
            SpdkLevel::Info => "INFO",
            SpdkLevel::Debug => "DEBUG",
        }
    }

    fn tracing(self) -> &'static str {
        match self {
            SpdkLevel::Error => "error",
            SpdkLevel::Warning => "warn",
            SpdkLevel::Notice | SpdkLevel::Info => "info",
            SpdkLevel::Debug => "debug",
        }
    }
}

/// Installs a `tracing` filter directive (`EnvFilter` syntax); `Err` with a reason if it cannot.
pub type ApplyFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct LogState {
    level: SpdkLevel,
    print_level: SpdkLevel,
    flags: BTreeSet<&'static str>,
}

/// The application's log settings as the log methods see and change them (module docs).
/// Created by the application with its subscriber's reload hook; held by the [`Framework`].
///
/// [`Framework`]: crate::Framework
pub struct LogControl {
    state: Mutex<LogState>,
    apply: ApplyFilter,
}

impl LogControl {
    /// Both thresholds start at `initial` (what the application's `-L` said); no flag is set.
    /// `apply` is not called until a method changes something.
    pub fn new(initial: SpdkLevel, apply: ApplyFilter) -> LogControl {
        LogControl {
            state: Mutex::new(LogState {
                level: initial,
                print_level: initial,
                flags: BTreeSet::new(),
            }),
            apply,
        }
    }

    /// The filter directive for a state: the more verbose threshold for everything, and DEBUG
    /// for the targets of every set flag.
    fn directive(st: &LogState) -> String {
        let mut d = st.level.max(st.print_level).tracing().to_string();
        for (name, targets) in FLAGS {
            if st.flags.contains(name) {
                for t in *targets {
                    d.push_str(&format!(",{t}=debug"));
                }
            }
        }
        d
    }

    /// Changes the state with `f` and installs the result; on failure nothing changes.
    fn update(&self, f: impl FnOnce(&mut LogState)) -> Result<(), RpcError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = st.clone();
        f(&mut next);
        (self.apply)(&Self::directive(&next))
            .map_err(|e| RpcError::new(INTERNAL_ERROR, format!("cannot change the log filter: {e}")))?;
        *st = next;
        Ok(())
    }
}

fn control(ctx: &Ctx) -> Result<&LogControl, RpcError> {
    ctx.fw
        .log()
        .ok_or_else(|| RpcError::new(INTERNAL_ERROR, "this program has no run-time log control"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelParams {
    level: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagParams {
    flag: String,
}

fn set_level(ctx: &Ctx, params: Option<Value>, reply: Reply, print: bool) {
    let p: LevelParams = match decode_internal(params) {
        Ok(p) => p,
        Err(e) => return reply(Err(e)),
    };
    let Some(level) = SpdkLevel::parse(&p.level) else {
        return reply(Err(RpcError::new(INVALID_PARAMS, "invalid log level")));
    };
    let r = control(ctx).and_then(|c| {
        c.update(|st| {
            if print {
                st.print_level = level;
            } else {
                st.level = level;
            }
        })
    });
    reply(r.map(|_| json!(true)))
}

fn get_level(ctx: &Ctx, params: Option<Value>, reply: Reply, print: bool) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    reply(control(ctx).map(|c| {
        let st = c.state.lock().unwrap_or_else(|e| e.into_inner());
        json!(if print { st.print_level } else { st.level }.name())
    }))
}

fn set_flag(ctx: &Ctx, params: Option<Value>, reply: Reply, on: bool) {
    let p: FlagParams = match decode_internal(params) {
        Ok(p) => p,
        Err(e) => return reply(Err(e)),
    };
    let names: Vec<&'static str> = if p.flag == "all" {
        FLAGS.iter().map(|(n, _)| *n).collect()
    } else {
        match FLAGS.iter().find(|(n, _)| *n == p.flag) {
            Some((n, _)) => vec![*n],
            None => {
                let known: Vec<&str> = FLAGS.iter().map(|(n, _)| *n).collect();
                return reply(Err(RpcError::new(
                    INVALID_PARAMS,
                    format!("unknown log flag '{}' (known: all, {})", p.flag, known.join(", ")),
                )));
            }
        }
    };
    let r = control(ctx).and_then(|c| {
        c.update(|st| {
            for n in names {
                if on {
                    st.flags.insert(n);
                } else {
                    st.flags.remove(n);
                }
            }
        })
    });
    reply(r.map(|_| json!(true)))
}

fn log_set_print_level(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    set_level(ctx, params, reply, true)
}
fn log_get_print_level(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    get_level(ctx, params, reply, true)
}
fn log_set_level(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    set_level(ctx, params, reply, false)
}
fn log_get_level(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    get_level(ctx, params, reply, false)
}
fn log_set_flag(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    set_flag(ctx, params, reply, true)
}
fn log_clear_flag(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    set_flag(ctx, params, reply, false)
}

fn log_get_flags(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    reply(control(ctx).map(|c| {
        let st = c.state.lock().unwrap_or_else(|e| e.into_inner());
        let m: Map<String, Value> = FLAGS
            .iter()
            .map(|(n, _)| (n.to_string(), json!(st.flags.contains(n))))
            .collect();
        Value::Object(m)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn directives_follow_the_more_verbose_threshold_and_the_flags() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s2 = seen.clone();
        let c = LogControl::new(
            SpdkLevel::Warning,
            Box::new(move |d| {
                s2.lock().unwrap().push(d.to_string());
                Ok(())
            }),
        );
        c.update(|st| st.print_level = SpdkLevel::Error).unwrap();
        c.update(|st| st.level = SpdkLevel::Info).unwrap();
        c.update(|st| {
            st.flags.insert("vbdev_split");
        })
        .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["warn", "info", "info,keel_bdev::modules::split=debug"]
        );
        // A refused filter changes nothing.
        let bad = LogControl::new(SpdkLevel::Notice, Box::new(|_| Err("no".into())));
        assert!(bad.update(|st| st.level = SpdkLevel::Debug).is_err());
        assert_eq!(bad.state.lock().unwrap().level, SpdkLevel::Notice);
    }

    #[test]
    fn levels_parse_as_spdk_and_from_tracing_words() {
        for l in [
            SpdkLevel::Error,
            SpdkLevel::Warning,
            SpdkLevel::Notice,
            SpdkLevel::Info,
            SpdkLevel::Debug,
        ] {
            assert_eq!(SpdkLevel::parse(l.name()), Some(l));
            assert_eq!(SpdkLevel::parse(&l.name().to_lowercase()), Some(l));
        }
        assert_eq!(SpdkLevel::parse("WARN"), None);
        assert_eq!(SpdkLevel::from_tracing("warn"), Some(SpdkLevel::Warning));
        assert_eq!(SpdkLevel::from_tracing("keel_md=debug"), None);
        let names: BTreeSet<&str> = FLAGS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), FLAGS.len(), "flag names are unique");
    }
}
