//! fio 3.33's C ABI mirrored in Rust, and the engine's callbacks. The crate's only `unsafe`.
//!
//! Layouts follow `shared/specs/fio-ioengine.md` (fio 3.33, Debian bookworm, x86_64):
//! `ioengine_ops` version 31 (264 bytes), `fio_option` (1 512 bytes) and prefixes of `io_u` and
//! `fio_file` are `#[repr(C)]` structs whose offsets are checked at compile time; `thread_data`
//! (192 KiB, and the layout most likely to move between fio versions) is only touched at the
//! byte offsets listed in [`td`]. That is why the engine refuses any fio but 3.33 when it is
//! loaded ([`check_fio_version`], run by [`get_ioengine`]) and checks `td->io_ops` against its own
//! ops struct before trusting the other offsets.
//!
//! fio finds the engine through the exported [`get_ioengine`] (there is deliberately no
//! `ioengine` data symbol: that would bypass the version check). It always returns the same
//! static, writable ops struct — fio stores the dlopen handle in it and compares pointers to
//! decide whether a job's engine options survive.
//!
//! Callbacks split in two groups:
//!
//! - control (`setup`, `init`, `io_u_init`, `iomem_alloc`, `iomem_free`, `post_init`,
//!   `open_file`, `close_file`, `invalidate`, `cleanup`): may allocate, log, and catch panics
//!   (a panic becomes an error return with a message);
//! - data (`queue`, `commit`, `getevents`, `event`): read a few fields, call the safe
//!   [`JobEngine`], write `io_u->error`. No allocation, lock or syscall; a panic there aborts
//!   (an `extern "C"` function cannot unwind), which only an engine bug can cause.
//!
//! Every `unsafe` block says why it is sound. The common ground: fio passes valid pointers to
//! its own live objects, calls one job's callbacks only from that job's thread (`thread=1` is
//! enforced in `setup`, `io_submit_mode=offload` is refused through `FIO_NO_OFFLOAD`) and never
//! re-enters the engine from inside a callback, so the `&mut JobEngine` formed from
//! `td->io_ops_data` is unique while it exists.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::mem::offset_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

use crate::engine::{JobEngine, Queued};
use crate::global::Global;

/// `FIO_IOOPS_VERSION` of fio 3.33: pins the `ioengine_ops` layout below.
pub const FIO_IOOPS_VERSION: c_int = 31;
/// The only fio this engine runs in (the value of fio's `fio_version_string`).
pub const SUPPORTED_FIO_VERSION: &str = "fio-3.33";
/// Environment variable naming a version to check *as well as* the real one (tests use it to
/// see the refusal; it cannot make an unsupported fio acceptable).
pub const TEST_VERSION_ENV: &str = "KEEL_FIO_TEST_VERSION";
/// How long `cleanup` waits for in-flight I/O before it gives up on it.
const CLEANUP_DRAIN: Duration = Duration::from_secs(5);

// `ioengine_ops.flags` (ioengines.h).
const FIO_RAWIO: c_int = 1 << 1;
const FIO_DISKLESSIO: c_int = 1 << 2;
const FIO_NOEXTEND: c_int = 1 << 3;
const FIO_NODISKUTIL: c_int = 1 << 4;
const FIO_MEMALIGN: c_int = 1 << 9;
const FIO_NO_OFFLOAD: c_int = 1 << 15;

// `enum fio_q_status`.
const FIO_Q_COMPLETED: c_int = 0;
const FIO_Q_QUEUED: c_int = 1;

// `fio_file.filetype` / `fio_file.flags`.
const FIO_TYPE_BLOCK: c_int = 2;
const FIO_FILE_SIZE_KNOWN: c_uint = 1 << 4;

// `fio_option` type, category and group values (parse.h, optgroup.h).
const FIO_OPT_STR_STORE: c_uint = 6;
const FIO_OPT_C_ENGINE: u64 = 1 << 6;
const FIO_OPT_G_INVALID: u64 = 1 << 40;

/// `struct thread_data`, opaque: reached only through the offsets in [`td`].
#[repr(C)]
pub struct ThreadData {
    _opaque: [u8; 0],
}

/// Byte offsets into fio 3.33's `struct thread_data` (x86_64), from the spec's table.
pub mod td {
    /// `o.iodepth` (unsigned int).
    pub const IODEPTH: usize = 24 + 184;
    /// `o.use_thread` (unsigned int).
    pub const USE_THREAD: usize = 24 + 1232;
    /// `eo`: the job's engine-option block.
    pub const EO: usize = 4216;
    /// `files` (`struct fio_file **`).
    pub const FILES: usize = 188_832;
    /// `files_index` (unsigned int): number of files.
    pub const FILES_INDEX: usize = 188_852;
    /// `orig_buffer` (`char *`), set by `iomem_alloc`.
    pub const ORIG_BUFFER: usize = 189_056;
    /// `io_ops` (`struct ioengine_ops *`).
    pub const IO_OPS: usize = 189_952;
    /// `io_ops_data` (`void *`): the engine's per-job pointer.
    pub const IO_OPS_DATA: usize = 189_968;
}

/// Prefix of `struct io_u` (fio owns the allocation; 368 bytes in all).
#[repr(C)]
pub struct IoU {
    start_time: [i64; 2],
    issue_time: [i64; 2],
    pub file: *mut FioFile,
    flags: c_uint,
    pub ddir: c_int,
    acct_ddir: c_int,
    numberio: u16,
    ioprio: u16,
    clat_prio_index: u16,
    _pad0: [u16; 3],
    pub buflen: u64,
    pub offset: u64,
    verify_offset: u64,
    pub buf: *mut c_void,
    rand_seed: u64,
    pub xfer_buf: *mut c_void,
    pub xfer_buflen: u64,
    buf_filled_len: u64,
    ipo: *mut c_void,
    pub resid: u64,
    pub error: c_uint,
    _pad1: c_uint,
    /// Union with `index`: fio sets `index = i` before `io_u_init`; the engine stores the slot.
    pub engine_data: *mut c_void,
}

const _: () = {
    assert!(offset_of!(IoU, file) == 32);
    assert!(offset_of!(IoU, ddir) == 44);
    assert!(offset_of!(IoU, buflen) == 64);
    assert!(offset_of!(IoU, offset) == 72);
    assert!(offset_of!(IoU, buf) == 88);
    assert!(offset_of!(IoU, xfer_buf) == 104);
    assert!(offset_of!(IoU, xfer_buflen) == 112);
    assert!(offset_of!(IoU, resid) == 136);
    assert!(offset_of!(IoU, error) == 144);
    assert!(offset_of!(IoU, engine_data) == 152);
};

/// Prefix of `struct fio_file` (376 bytes).
#[repr(C)]
pub struct FioFile {
    _hash_list: [usize; 2],
    pub filetype: c_int,
    fd: c_int,
    _r0: [u32; 3],
    fileno: c_int,
    pub file_name: *mut c_char,
    pub real_file_size: u64,
    file_offset: u64,
    io_size: u64,
    _r1: [u64; 12],
    engine_pos: u64,
    /// Free for the engine: the [`JobEngine::open`] token.
    pub engine_data: *mut c_void,
    _r2: [u8; 180],
    pub flags: c_uint,
    _r3: [u8; 8],
}

const _: () = {
    assert!(offset_of!(FioFile, filetype) == 16);
    assert!(offset_of!(FioFile, fileno) == 36);
    assert!(offset_of!(FioFile, file_name) == 40);
    assert!(offset_of!(FioFile, real_file_size) == 48);
    assert!(offset_of!(FioFile, engine_pos) == 168);
    assert!(offset_of!(FioFile, engine_data) == 176);
    assert!(offset_of!(FioFile, flags) == 364);
    assert!(std::mem::size_of::<FioFile>() == 376);
};

type TdFn = unsafe extern "C" fn(*mut ThreadData) -> c_int;
type TdVoidFn = unsafe extern "C" fn(*mut ThreadData);
type TdIoUFn = unsafe extern "C" fn(*mut ThreadData, *mut IoU) -> c_int;
type TdFileFn = unsafe extern "C" fn(*mut ThreadData, *mut FioFile) -> c_int;
type GetEventsFn = unsafe extern "C" fn(*mut ThreadData, c_uint, c_uint, *const libc::timespec) -> c_int;
type EventFn = unsafe extern "C" fn(*mut ThreadData, c_int) -> *mut IoU;
type IomemAllocFn = unsafe extern "C" fn(*mut ThreadData, usize) -> c_int;

/// `struct ioengine_ops`, version 31 (264 bytes).
#[repr(C)]
pub struct IoengineOps {
    list: [*mut c_void; 2],
    name: *const c_char,
    version: c_int,
    flags: c_int,
    dlhandle: *mut c_void,
    setup: Option<TdFn>,
    init: Option<TdFn>,
    post_init: Option<TdFn>,
    prep: Option<TdIoUFn>,
    queue: Option<TdIoUFn>,
    commit: Option<TdFn>,
    getevents: Option<GetEventsFn>,
    event: Option<EventFn>,
    errdetails: *const c_void,
    cancel: Option<TdIoUFn>,
    cleanup: Option<TdVoidFn>,
    open_file: Option<TdFileFn>,
    close_file: Option<TdFileFn>,
    invalidate: Option<TdFileFn>,
    unlink_file: Option<TdFileFn>,
    get_file_size: Option<TdFileFn>,
    prepopulate_file: Option<TdFileFn>,
    terminate: Option<TdVoidFn>,
    iomem_alloc: Option<IomemAllocFn>,
    iomem_free: Option<TdVoidFn>,
    io_u_init: Option<TdIoUFn>,
    io_u_free: *const c_void,
    get_zoned_model: *const c_void,
    report_zones: *const c_void,
    reset_wp: *const c_void,
    get_max_open_zones: *const c_void,
    option_struct_size: c_int,
    options: *mut FioOption,
}

const _: () = {
    assert!(offset_of!(IoengineOps, name) == 16);
    assert!(offset_of!(IoengineOps, version) == 24);
    assert!(offset_of!(IoengineOps, flags) == 28);
    assert!(offset_of!(IoengineOps, dlhandle) == 32);
    assert!(offset_of!(IoengineOps, setup) == 40);
    assert!(offset_of!(IoengineOps, queue) == 72);
    assert!(offset_of!(IoengineOps, getevents) == 88);
    assert!(offset_of!(IoengineOps, event) == 96);
    assert!(offset_of!(IoengineOps, cleanup) == 120);
    assert!(offset_of!(IoengineOps, open_file) == 128);
    assert!(offset_of!(IoengineOps, iomem_alloc) == 184);
    assert!(offset_of!(IoengineOps, io_u_init) == 200);
    assert!(offset_of!(IoengineOps, get_max_open_zones) == 240);
    assert!(offset_of!(IoengineOps, option_struct_size) == 248);
    assert!(offset_of!(IoengineOps, options) == 256);
    assert!(std::mem::size_of::<IoengineOps>() == 264);
};

/// `struct fio_option` (1 512 bytes); only the fields an engine option sets are named.
#[repr(C)]
pub struct FioOption {
    name: *const c_char,
    lname: *const c_char,
    alias: *const c_char,
    type_: c_uint,
    off: [c_uint; 6],
    _pad0: c_uint,
    maxval: u64,
    minval: c_int,
    _pad1: c_int,
    maxfp: f64,
    minfp: f64,
    interval: c_uint,
    maxlen: c_uint,
    neg: c_uint,
    prio: c_int,
    cb: *const c_void,
    help: *const c_char,
    def: *const c_char,
    posval: [[u64; 5]; 32],
    parent: *const c_char,
    hide: c_int,
    hide_on_set: c_int,
    inverse: *const c_char,
    inv_opt: *const c_void,
    verify: *const c_void,
    prof_name: *const c_char,
    prof_opts: *const c_void,
    category: u64,
    group: u64,
    gui_data: *const c_void,
    is_seconds: c_int,
    is_time: c_int,
    no_warn_def: c_int,
    pow2: c_int,
    no_free: c_int,
    _pad2: c_int,
}

const _: () = {
    assert!(offset_of!(FioOption, type_) == 24);
    assert!(offset_of!(FioOption, off) == 28);
    assert!(offset_of!(FioOption, maxval) == 56);
    assert!(offset_of!(FioOption, maxfp) == 72);
    assert!(offset_of!(FioOption, cb) == 104);
    assert!(offset_of!(FioOption, help) == 112);
    assert!(offset_of!(FioOption, def) == 120);
    assert!(offset_of!(FioOption, posval) == 128);
    assert!(offset_of!(FioOption, parent) == 1408);
    assert!(offset_of!(FioOption, category) == 1464);
    assert!(offset_of!(FioOption, group) == 1472);
    assert!(offset_of!(FioOption, no_free) == 1504);
    assert!(std::mem::size_of::<FioOption>() == 1512);
};

/// The engine's option block (`td->eo`); fio allocates it per job with
/// `ops.option_struct_size` bytes and parses values into it at `off1`.
#[repr(C)]
pub struct KeelOptions {
    /// fio writes a `thread_data *` here (unreliable at run time; not used).
    pad: *mut c_void,
    /// `keel_json_conf=`: a `strdup`'d path or NULL.
    json_conf: *mut c_char,
}

impl FioOption {
    /// The all-zero entry that ends an option array.
    const END: FioOption = {
        // SAFETY: every field is an integer, a float, a raw pointer or an array of those; all
        // zero bits is a valid value for each (null pointers, 0, 0.0).
        unsafe { std::mem::zeroed() }
    };

    /// An engine option storing a string (`FIO_OPT_STR_STORE`) at `off1`.
    const fn string(name: &'static CStr, lname: &'static CStr, off1: usize, help: &'static CStr) -> FioOption {
        let mut o = FioOption::END;
        o.name = name.as_ptr();
        o.lname = lname.as_ptr();
        o.type_ = FIO_OPT_STR_STORE;
        o.off[0] = off1 as c_uint;
        o.help = help.as_ptr();
        o.category = FIO_OPT_C_ENGINE;
        o.group = FIO_OPT_G_INVALID;
        o
    }
}

/// A static fio may write to (it stores `dlhandle` in the ops) and reads from any thread.
#[repr(transparent)]
struct FioShared<T>(UnsafeCell<T>);

// SAFETY: fio writes to these statics only while loading the engine (`dlhandle`, from its
// parsing thread, before any job thread runs) and otherwise only reads them; Rust code never
// forms references to their contents after handing out the pointer. Raw pointers inside point
// to other statics that live as long as the library (which is linked `-z nodelete`).
unsafe impl<T> Sync for FioShared<T> {}

static OPTIONS: FioShared<[FioOption; 2]> = FioShared(UnsafeCell::new([
    FioOption::string(
        c"keel_json_conf",
        c"Keel JSON config",
        offset_of!(KeelOptions, json_conf),
        c"Keel JSON config (SPDK format) that creates the bdevs named by filename=; loaded once per fio process",
    ),
    FioOption::END,
]));

/// The engine's one ops struct: the same pointer on every `get_ioengine` call.
static OPS: FioShared<IoengineOps> = FioShared(UnsafeCell::new(IoengineOps {
    list: [std::ptr::null_mut(); 2],
    name: c"keel".as_ptr(),
    version: FIO_IOOPS_VERSION,
    flags: FIO_RAWIO | FIO_DISKLESSIO | FIO_NOEXTEND | FIO_NODISKUTIL | FIO_MEMALIGN | FIO_NO_OFFLOAD,
    dlhandle: std::ptr::null_mut(),
    setup: Some(keel_setup),
    init: Some(keel_init),
    post_init: Some(keel_post_init),
    prep: None,
    queue: Some(keel_queue),
    commit: Some(keel_commit),
    getevents: Some(keel_getevents),
    event: Some(keel_event),
    errdetails: std::ptr::null(),
    cancel: None,
    cleanup: Some(keel_cleanup),
    open_file: Some(keel_open_file),
    close_file: Some(keel_close_file),
    invalidate: Some(keel_invalidate),
    unlink_file: None,
    get_file_size: None,
    prepopulate_file: None,
    terminate: None,
    iomem_alloc: Some(keel_iomem_alloc),
    iomem_free: Some(keel_iomem_free),
    io_u_init: Some(keel_io_u_init),
    io_u_free: std::ptr::null(),
    get_zoned_model: std::ptr::null(),
    report_zones: std::ptr::null(),
    reset_wp: std::ptr::null(),
    get_max_open_zones: std::ptr::null(),
    option_struct_size: std::mem::size_of::<KeelOptions>() as c_int,
    options: OPTIONS.0.get() as *mut FioOption,
}));

/// Checks the running fio's version string (and the test override, if set) against
/// [`SUPPORTED_FIO_VERSION`]; the error names both.
pub fn check_fio_version(found: Option<&str>, test_override: Option<&str>) -> Result<(), String> {
    let refuse = |v: &str| {
        Err(format!(
            "this engine supports fio 3.33 only ({SUPPORTED_FIO_VERSION}, as Debian bookworm ships it): it \
             mirrors that version's thread_data layout; the running fio is {v}"
        ))
    };
    match found {
        None => return refuse("unknown (fio_version_string not found)"),
        Some(v) if v != SUPPORTED_FIO_VERSION => return refuse(v),
        Some(_) => {}
    }
    match test_override {
        Some(v) if v != SUPPORTED_FIO_VERSION => refuse(v),
        _ => Ok(()),
    }
}

/// Looks a symbol up in the running process (fio's executable exports its symbols).
fn process_symbol(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the loaded objects'
    // symbol tables.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

fn running_fio_version() -> Option<String> {
    let p = process_symbol(c"fio_version_string") as *const c_char;
    if p.is_null() {
        return None;
    }
    // SAFETY: fio's `fio_version_string` is a NUL-terminated char array ("fio-3.33") that lives
    // as long as the process.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

type LogErrFn = unsafe extern "C" fn(*const c_char, ...) -> isize;

/// Prints `msg` through fio's `log_err` (so it lands where fio's own errors go, also in
/// client/server mode), or on stderr outside fio. Control path.
pub fn log_error(msg: &str) {
    static LOG_ERR: OnceLock<Option<LogErrFn>> = OnceLock::new();
    let f = *LOG_ERR.get_or_init(|| {
        let p = process_symbol(c"log_err");
        // SAFETY: fio exports `ssize_t log_err(const char *format, ...)`; a non-null symbol of
        // that name in fio's executable has exactly this type.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, LogErrFn>(p) })
    });
    let line = format!("keel fio engine: {msg}\n");
    match (f, CString::new(line.replace('\0', " "))) {
        (Some(f), Ok(c)) => {
            // SAFETY: a printf-style call with a constant "%s" format and one valid C string.
            unsafe { f(c"%s".as_ptr(), c.as_ptr()) };
        }
        _ => eprint!("{line}"),
    }
}

/// Entry point fio looks up after `dlopen`: hands out the engine's ops struct, or NULL (after
/// printing why) when the running fio is not the supported version.
///
/// # Safety
/// `out` must be null or valid for writing one pointer (fio passes the address of a local).
#[no_mangle]
pub unsafe extern "C" fn get_ioengine(out: *mut *mut IoengineOps) {
    if out.is_null() {
        return;
    }
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    let verdict = VERDICT.get_or_init(|| {
        let test = std::env::var(TEST_VERSION_ENV).ok();
        check_fio_version(running_fio_version().as_deref(), test.as_deref())
    });
    let ops = match verdict {
        Ok(()) => OPS.0.get(),
        Err(msg) => {
            log_error(msg);
            std::ptr::null_mut()
        }
    };
    // SAFETY: `out` is non-null and, per fio's contract, points to writable storage.
    unsafe { *out = ops };
}

/// Reads a `T` at `off` bytes into `thread_data`.
///
/// # Safety
/// `t` is a live `thread_data` of fio 3.33 and `off` one of [`td`]'s offsets for a `T` field.
#[inline(always)]
unsafe fn td_read<T: Copy>(t: *mut ThreadData, off: usize) -> T {
    // SAFETY: per the function contract the field exists, is initialised and aligned.
    unsafe { (t as *const u8).add(off).cast::<T>().read() }
}

/// Writes a `T` at `off` bytes into `thread_data`.
///
/// # Safety
/// As [`td_read`], and fio expects the engine to write that field.
#[inline(always)]
unsafe fn td_write<T>(t: *mut ThreadData, off: usize, v: T) {
    // SAFETY: per the function contract the field exists and is aligned.
    unsafe { (t as *mut u8).add(off).cast::<T>().write(v) }
}

/// The job's engine, if `init` made one.
///
/// # Safety
/// `t` is a live `thread_data` whose callbacks run on this thread; the caller must not hold
/// another reference to the engine.
#[inline(always)]
unsafe fn engine<'a>(t: *mut ThreadData) -> Option<&'a mut JobEngine> {
    // SAFETY: `io_ops_data` is either null or the `Box<JobEngine>` that `keel_init` leaked for
    // this job; callbacks of one job run on one thread and never nest (module docs).
    unsafe { td_read::<*mut JobEngine>(t, td::IO_OPS_DATA).as_mut() }
}

/// Runs a control callback body, turning errors and panics into a logged message and `1`.
fn control(what: &str, body: impl FnOnce() -> Result<(), String>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            log_error(&msg);
            1
        }
        Err(_) => {
            log_error(&format!("{what}: internal error (panic)"));
            1
        }
    }
}

/// Checks that `t` belongs to this engine: `td->io_ops` is our ops struct. Guards every other
/// offset (a different layout would not put our pointer there).
///
/// # Safety
/// `t` is a live `thread_data`.
unsafe fn check_td(t: *mut ThreadData) -> Result<(), String> {
    // SAFETY: `t` is live; IO_OPS is a pointer field in 3.33's layout (version checked at load).
    let ops: *mut IoengineOps = unsafe { td_read(t, td::IO_OPS) };
    if ops == OPS.0.get() {
        Ok(())
    } else {
        Err(format!(
            "fio's thread_data does not have the {SUPPORTED_FIO_VERSION} layout (io_ops at offset {} is not this \
             engine); refusing to run",
            td::IO_OPS
        ))
    }
}

/// The job's `keel_json_conf`, if set.
///
/// # Safety
/// `t` is a live, checked (`check_td`) `thread_data`.
unsafe fn json_conf(t: *mut ThreadData) -> Option<String> {
    // SAFETY: `eo` is null or the job's option block of `option_struct_size` bytes, laid out as
    // `KeelOptions`; `json_conf` is null or a NUL-terminated string fio allocated.
    unsafe {
        let eo: *const KeelOptions = td_read(t, td::EO);
        let s = eo.as_ref()?.json_conf;
        (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// The job's files, as (pointer, name) pairs.
///
/// # Safety
/// `t` is a live, checked `thread_data`; the files array is not modified while the result is
/// used (fio changes it only through `add_file`, which the caller re-reads after).
unsafe fn files(t: *mut ThreadData) -> Vec<(*mut FioFile, String)> {
    // SAFETY: `files` holds `files_index` valid `fio_file` pointers with NUL-terminated names.
    unsafe {
        let arr: *mut *mut FioFile = td_read(t, td::FILES);
        let n: c_uint = td_read(t, td::FILES_INDEX);
        if arr.is_null() {
            return Vec::new();
        }
        (0..n as usize)
            .filter_map(|i| {
                let f = *arr.add(i);
                let name = f.as_ref()?.file_name;
                let name = if name.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(name).to_string_lossy().into_owned()
                };
                Some((f, name))
            })
            .collect()
    }
}

type AddFileFn = unsafe extern "C" fn(*mut ThreadData, *const c_char, c_int, c_int) -> c_int;

/// `filename=*`: adds every bdev no module claims as a file of the job, through fio's exported
/// `add_file` (as SPDK's plugin does).
///
/// # Safety
/// `t` is a live, checked `thread_data`, on the thread fio runs `setup` on.
unsafe fn expand_star(t: *mut ThreadData, g: &Global) -> Result<(), String> {
    let p = process_symbol(c"add_file");
    if p.is_null() {
        return Err("filename=* needs fio's add_file, which this process does not export".into());
    }
    // SAFETY: fio 3.33 exports `int add_file(struct thread_data *, const char *, int, int)`.
    let add_file = unsafe { std::mem::transmute::<*mut c_void, AddFileFn>(p) };
    for name in g.leaf_bdevs() {
        let c = CString::new(name.clone()).map_err(|_| format!("bdev name {name:?} contains NUL"))?;
        // SAFETY: `t` is live; fio copies the name.
        unsafe { add_file(t, c.as_ptr(), 0, 1) };
    }
    Ok(())
}

/// fio `setup` (fio's main thread with `create_serialize=1`, else the job thread): refuses
/// `thread=0`, loads the configuration once per process, and sets every file's size.
unsafe extern "C" fn keel_setup(t: *mut ThreadData) -> c_int {
    control("setup", || {
        // SAFETY: fio passes its live thread_data.
        unsafe { check_td(t)? };
        // SAFETY: checked thread_data; USE_THREAD is an unsigned int.
        let use_thread: c_uint = unsafe { td_read(t, td::USE_THREAD) };
        if use_thread == 0 {
            return Err(
                "thread=1 is required: every job must be a thread of the one fio process that holds \
                        the Keel bdevs (as for SPDK's plugin)"
                    .into(),
            );
        }
        // SAFETY: checked thread_data.
        let g = Global::load(unsafe { json_conf(t) }.as_deref())?;
        // SAFETY: checked thread_data.
        let mut list = unsafe { files(t) };
        if list.len() == 1 && list[0].1 == "*" {
            // SAFETY: checked thread_data, setup thread.
            unsafe { expand_star(t, &g)? };
            // SAFETY: as above; re-read after add_file may have moved the array.
            list = unsafe { files(t) };
        }
        for (f, name) in list {
            // SAFETY: `f` is one of the job's live fio_file structs.
            let f = unsafe { &mut *f };
            if name == "*" {
                // The placeholder of `filename=*`: no I/O goes to a zero-sized file.
                f.real_file_size = 0;
                continue;
            }
            let (size, _) = g.bdev_size(&name)?;
            f.real_file_size = size;
            f.filetype = FIO_TYPE_BLOCK;
            f.flags |= FIO_FILE_SIZE_KNOWN;
        }
        Ok(())
    })
}

/// fio `init` (job thread): the job's engine with its own reactor.
unsafe extern "C" fn keel_init(t: *mut ThreadData) -> c_int {
    control("init", || {
        // SAFETY: fio passes its live thread_data.
        unsafe { check_td(t)? };
        // SAFETY: checked thread_data.
        if unsafe { engine(t) }.is_some() {
            return Ok(());
        }
        // SAFETY: checked thread_data.
        let g = Global::load(unsafe { json_conf(t) }.as_deref())?;
        // SAFETY: checked thread_data; IODEPTH is an unsigned int.
        let iodepth: c_uint = unsafe { td_read(t, td::IODEPTH) };
        let e = Box::new(JobEngine::new(g, iodepth as usize)?);
        // SAFETY: checked thread_data; the engine owns `io_ops_data` and frees it in cleanup.
        unsafe { td_write(t, td::IO_OPS_DATA, Box::into_raw(e)) };
        Ok(())
    })
}

/// fio `io_u_init` (job thread): one slot per `io_u`.
unsafe extern "C" fn keel_io_u_init(t: *mut ThreadData, io_u: *mut IoU) -> c_int {
    control("io_u_init", || {
        // SAFETY: fio passes its live thread_data; no other engine reference is live.
        let e = unsafe { engine(t) }.ok_or("io_u_init before init")?;
        let slot = e.add_slot(io_u.cast());
        // SAFETY: `io_u` is a live io_u of this job; engine_data is the engine's field.
        unsafe { (*io_u).engine_data = slot as *mut c_void };
        Ok(())
    })
}

/// fio `iomem_alloc` (job thread): the job's buffer area comes from the engine.
unsafe extern "C" fn keel_iomem_alloc(t: *mut ThreadData, total_mem: usize) -> c_int {
    control("iomem_alloc", || {
        // SAFETY: live thread_data; no other engine reference is live.
        let e = unsafe { engine(t) }.ok_or("iomem_alloc before init")?;
        let p = e.alloc_buffer(total_mem)?;
        // SAFETY: `orig_buffer` is the field fio expects iomem_alloc to set.
        unsafe { td_write(t, td::ORIG_BUFFER, p) };
        Ok(())
    })
}

/// fio `iomem_free` (job thread).
unsafe extern "C" fn keel_iomem_free(t: *mut ThreadData) {
    control("iomem_free", || {
        // SAFETY: live thread_data; no other engine reference is live.
        if let Some(e) = unsafe { engine(t) } {
            e.free_buffer();
        }
        // SAFETY: as in iomem_alloc.
        unsafe { td_write(t, td::ORIG_BUFFER, std::ptr::null_mut::<u8>()) };
        Ok(())
    });
}

/// fio `post_init` (job thread): slots get their buffer windows.
unsafe extern "C" fn keel_post_init(t: *mut ThreadData) -> c_int {
    control("post_init", || {
        // SAFETY: live thread_data; no other engine reference is live.
        let e = unsafe { engine(t) }.ok_or("post_init before init")?;
        e.post_init();
        Ok(())
    })
}

/// fio `open_file` (job thread): descriptor and channel of the bdev.
unsafe extern "C" fn keel_open_file(t: *mut ThreadData, f: *mut FioFile) -> c_int {
    control("open_file", || {
        // SAFETY: live thread_data; no other engine reference is live.
        let e = unsafe { engine(t) }.ok_or("open_file before init")?;
        // SAFETY: `f` is a live fio_file of this job with a NUL-terminated name.
        let f = unsafe { &mut *f };
        // SAFETY: as above.
        let name = unsafe { CStr::from_ptr(f.file_name) }.to_string_lossy().into_owned();
        if name == "*" {
            return Ok(());
        }
        let token = e.open(&name)?;
        f.engine_data = token as *mut c_void;
        Ok(())
    })
}

/// fio `close_file` (job thread).
unsafe extern "C" fn keel_close_file(t: *mut ThreadData, f: *mut FioFile) -> c_int {
    control("close_file", || {
        // SAFETY: live fio_file of this job.
        let f = unsafe { &mut *f };
        // SAFETY: live thread_data; no other engine reference is live.
        if let Some(e) = unsafe { engine(t) } {
            e.close(f.engine_data as usize);
        }
        f.engine_data = std::ptr::null_mut();
        Ok(())
    })
}

/// fio `invalidate`: nothing is cached above a bdev.
unsafe extern "C" fn keel_invalidate(_t: *mut ThreadData, _f: *mut FioFile) -> c_int {
    0
}

/// fio `cleanup` (job thread, also after a failed init): drains and drops the engine.
unsafe extern "C" fn keel_cleanup(t: *mut ThreadData) {
    control("cleanup", || {
        // SAFETY: live thread_data; the engine pointer, if any, came from Box::into_raw in init.
        let p: *mut JobEngine = unsafe { td_read(t, td::IO_OPS_DATA) };
        if p.is_null() {
            return Ok(());
        }
        // SAFETY: as above; cleared so nothing uses it again.
        unsafe { td_write(t, td::IO_OPS_DATA, std::ptr::null_mut::<JobEngine>()) };
        // SAFETY: `p` is the leaked Box of this job, not referenced anywhere else now.
        let mut e = unsafe { Box::from_raw(p) };
        if e.owner() != std::thread::current().id() {
            // Its reactor and channels belong to another thread: leak rather than drop here.
            std::mem::forget(e);
            return Err("cleanup called off the job's thread; the job's Keel state is leaked".into());
        }
        if !e.drain(CLEANUP_DRAIN) {
            let n = e.busy();
            std::mem::forget(e);
            return Err(format!(
                "{n} I/Os did not complete within {} s of the job's end; the job's Keel state is leaked",
                CLEANUP_DRAIN.as_secs()
            ));
        }
        drop(e);
        Ok(())
    });
}

/// fio `queue` (job thread, data path).
unsafe extern "C" fn keel_queue(t: *mut ThreadData, io_u: *mut IoU) -> c_int {
    // SAFETY: fio passes the job's live thread_data and one of its io_us (set up by io_u_init),
    // whose `file` is a live fio_file of the job; one engine reference at a time (module docs).
    unsafe {
        let u = &mut *io_u;
        let Some(e) = engine(t) else {
            u.error = libc::ENODEV as c_uint;
            return FIO_Q_COMPLETED;
        };
        let token = u.file.as_ref().map_or(0, |f| f.engine_data as usize);
        match e.queue(
            u.engine_data as usize,
            io_u.cast(),
            u.ddir,
            token,
            u.offset,
            u.xfer_buf as usize,
            u.xfer_buflen,
        ) {
            Queued::Queued => FIO_Q_QUEUED,
            Queued::Completed(errno) => {
                u.error = errno;
                FIO_Q_COMPLETED
            }
        }
    }
}

/// fio `commit` (job thread, data path).
unsafe extern "C" fn keel_commit(t: *mut ThreadData) -> c_int {
    // SAFETY: live thread_data of this job; one engine reference at a time.
    if let Some(e) = unsafe { engine(t) } {
        e.commit();
    }
    0
}

/// fio `getevents` (job thread, data path).
unsafe extern "C" fn keel_getevents(t: *mut ThreadData, min: c_uint, max: c_uint, ts: *const libc::timespec) -> c_int {
    // SAFETY: live thread_data of this job; one engine reference at a time.
    let Some(e) = (unsafe { engine(t) }) else {
        return 0;
    };
    // SAFETY: `ts` is null or fio's valid timespec.
    let timeout = unsafe { ts.as_ref() }
        .map(|ts| Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32));
    e.getevents(min as usize, max as usize, timeout, |io_u, errno| {
        // SAFETY: `io_u` is the address io_u_init paired with the reaped slot: a live io_u of
        // this job that fio has not seen complete yet.
        unsafe { (*io_u.cast::<IoU>()).error = errno };
    }) as c_int
}

/// fio `event` (job thread, data path).
unsafe extern "C" fn keel_event(t: *mut ThreadData, i: c_int) -> *mut IoU {
    // SAFETY: live thread_data of this job; one engine reference at a time.
    match unsafe { engine(t) } {
        Some(e) => e.event(i as usize).cast(),
        None => std::ptr::null_mut(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check_names_the_supported_version() {
        assert!(check_fio_version(Some("fio-3.33"), None).is_ok());
        assert!(check_fio_version(Some("fio-3.33"), Some("fio-3.33")).is_ok());
        for (found, test) in [
            (Some("fio-3.35"), None),
            (None, None),
            (Some("fio-3.33"), Some("fio-3.36")),
        ] {
            let e = check_fio_version(found, test).unwrap_err();
            assert!(e.contains("fio 3.33 only"), "{e}");
        }
        assert!(check_fio_version(Some("fio-3.35"), None)
            .unwrap_err()
            .ends_with("fio-3.35"));
    }

    #[test]
    fn ops_and_options_are_static_and_complete() {
        let mut a = OPS.0.get();
        // Outside fio there is no fio_version_string: the loader refuses (and logs to stderr).
        // SAFETY: a valid out pointer.
        unsafe { get_ioengine(&mut a) };
        assert!(a.is_null());
        let b = OPS.0.get();
        // SAFETY: reading our own static's fields; nothing writes it in this test.
        let ops = unsafe { &*b };
        assert_eq!(ops.version, 31);
        assert!(ops.queue.is_some() && ops.getevents.is_some() && ops.event.is_some() && ops.open_file.is_some());
        // SAFETY: the option array is static; reading its first entry's name.
        let name = unsafe { CStr::from_ptr((*ops.options).name) };
        assert_eq!(name.to_str().unwrap(), "keel_json_conf");
        // SAFETY: second entry exists (END).
        assert!(unsafe { (*ops.options.add(1)).name }.is_null());
    }
}
