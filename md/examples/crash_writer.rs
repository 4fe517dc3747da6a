//! `crash_writer`: a small process that embeds Keel's stack (one reactor, a bdev registry,
//! uring bdevs over member files, an md array — raid1 by default, or raid4/5/6/10 — with an
//! internal write-intent bitmap) and writes to the array until it is killed. The md crash scenario (`md/tests/crash_resync.rs`)
//! SIGKILLs it mid-write and then checks what the members hold.
//!
//! ```text
//! crash_writer [--create] --member FILE --member FILE... [--level raid1] [--chunk-kb N]
//!              [--name md0] [--qd 8] [--range-start-pct 0] [--range-len-pct 25]
//!              [--gen-start 1] [--seed 1] [--stop-after N]
//! ```
//!
//! * `--create` makes a fresh array of `--level` (raid1 unless given; `--chunk-kb` as md_create)
//!   over the files, `assume_clean`, bitmap "internal"; without it the array is assembled from
//!   the members' superblocks (`MdRegistry::assemble`).
//! * The writer then runs `--qd` 4 KiB writes at once through the array bdev, each to a random
//!   4 KiB block of `[start, start + len)` percent of the array (so the bitmap keeps clean
//!   chunks). Two writes in flight never target the same block, so a block's writes land in
//!   the order they were issued.
//! * Every write carries its `(block, generation)`: the 4 KiB begin with `KEELCRSH`, the block
//!   and the generation (little-endian u64s), then a xorshift stream seeded by both
//!   ([`fill_block`]; the test has a copy). Generations count up from `--gen-start`, one per
//!   write, so runs with different starts never reuse one.
//! * stdout gets, one line each and flushed at once: `READY <array> <blocks_4k> <lo> <hi>` when
//!   the array is up, `ISSUE <block> <gen>` right before a write is submitted, `ACK <block>
//!   <gen>` after it completed successfully, and `STOPPED` after a clean stop. A failed write
//!   prints `FAIL <block> <gen> <status>` and exits 1.
//! * Without `--stop-after` it never stops on its own. With `--stop-after N` it writes N blocks,
//!   waits for them, stops the array cleanly (`md_stop`: superblocks "clean") and exits 0.
//!
//! md's log (tracing, level `info` unless `RUST_LOG` says otherwise) goes to stderr.
//!
//! Test tool: it allocates freely (a line per I/O); the data path of the stack it drives is the
//! real one.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use keel_bdev::modules::uring::{self, UringOpts};
use keel_bdev::{BdevRegistry, Channel, CompletionQueue, Descriptor, DmaBuf, IoBox, IoOp, IoRequest, IoVec, Submit};
use keel_md::{AssembleOpts, CreateOpts, MdRegistry};
use keel_reactor::{current, CoreMask, PollStatus, PollerHandle, Runtime};

/// Bytes per write (the unit of `block` in the log lines).
const IO_BYTES: usize = 4096;
/// How long setup (bdevs + create/assemble) and the final stop may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

const USAGE: &str = "usage: crash_writer [--create] --member FILE --member FILE... [--level raid1] \
[--chunk-kb N] [--name md0] [--qd 8] [--range-start-pct 0] [--range-len-pct 25] [--gen-start 1] [--seed 1] \
[--stop-after N]";

/// Command line.
#[derive(Debug, Clone)]
struct Args {
    create: bool,
    members: Vec<String>,
    level: String,
    chunk_kb: Option<u32>,
    name: String,
    qd: usize,
    range_start_pct: u64,
    range_len_pct: u64,
    gen_start: u64,
    seed: u64,
    stop_after: Option<u64>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        create: false,
        members: Vec::new(),
        level: "raid1".into(),
        chunk_kb: None,
        name: "md0".into(),
        qd: 8,
        range_start_pct: 0,
        range_len_pct: 25,
        gen_start: 1,
        seed: 1,
        stop_after: None,
    };
    fn num(flag: &str, v: Option<String>) -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: '{v}' is not a number"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--create" => a.create = true,
            "--member" => a.members.push(it.next().ok_or("--member needs a file")?),
            "--name" => a.name = it.next().ok_or("--name needs a value")?,
            "--level" => a.level = it.next().ok_or("--level needs a value")?,
            "--chunk-kb" => a.chunk_kb = Some(num("--chunk-kb", it.next())? as u32),
            "--qd" => a.qd = num("--qd", it.next())? as usize,
            "--range-start-pct" => a.range_start_pct = num("--range-start-pct", it.next())?,
            "--range-len-pct" => a.range_len_pct = num("--range-len-pct", it.next())?,
            "--gen-start" => a.gen_start = num("--gen-start", it.next())?,
            "--seed" => a.seed = num("--seed", it.next())?,
            "--stop-after" => a.stop_after = Some(num("--stop-after", it.next())?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if a.members.len() < 2 {
        return Err(format!(
            "--member: give at least two member files, got {}",
            a.members.len()
        ));
    }
    if a.qd == 0 || a.qd > 256 {
        return Err("--qd: must be 1..=256".into());
    }
    if a.range_len_pct == 0 || a.range_start_pct + a.range_len_pct > 100 {
        return Err("--range-start-pct/--range-len-pct: the range must be non-empty and within 0..100".into());
    }
    if a.gen_start == 0 {
        return Err("--gen-start: generations start at 1 (0 would look like never written)".into());
    }
    Ok(a)
}

/// The content of a write of generation `gen` to 4 KiB block `block` (the test has a copy).
fn fill_block(block: u64, gen: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(b"KEELCRSH");
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&gen.to_le_bytes());
    let mut x = (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)) | 1;
    for w in buf[24..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

/// One line to stdout, flushed; a closed stdout (the test went away) ends the process.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// What the reactor tells the main thread.
enum Event {
    /// The array is up and the writer runs (the array's name), or why not.
    Ready(Result<String, String>),
    /// `--stop-after` finished and the array stopped (or not).
    Stopped(Result<(), String>),
    /// A write failed.
    Failed(String),
}

/// The write loop's state, owned by its poller on the main reactor.
struct Writer {
    args: Args,
    md: Arc<MdRegistry>,
    array: String,
    desc: Option<Descriptor>,
    ch: Option<Channel>,
    cq: CompletionQueue,
    free: Vec<IoBox>,
    /// A request the array handed back (`Submit::Requeue`); retried first.
    retry: Option<IoBox>,
    /// Per slot (the request's tag): its buffer and the (block, gen) it carries, if in flight.
    bufs: Vec<DmaBuf>,
    inflight: Vec<Option<(u64, u64)>>,
    io_blocks: u64,
    lo: u64,
    hi: u64,
    rng: u64,
    next_gen: u64,
    issued: u64,
    tx: mpsc::Sender<Event>,
    poller: Option<PollerHandle>,
    finished: bool,
}

impl Writer {
    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|s| s.is_some()).count()
    }

    fn pick_block(&mut self) -> u64 {
        loop {
            let b = self.lo + self.rand() % (self.hi - self.lo);
            if !self.inflight.iter().flatten().any(|(ib, _)| *ib == b) {
                return b;
            }
        }
    }

    fn poll(&mut self) -> bool {
        if self.finished {
            return false;
        }
        let mut busy = false;
        while let Some(io) = self.cq.pop() {
            busy = true;
            let slot = io.tag as usize;
            let (block, gen) = self.inflight[slot].take().expect("a completion of a write in flight");
            if io.status().is_success() {
                say(format_args!("ACK {block} {gen}"));
            } else {
                say(format_args!("FAIL {block} {gen} {}", io.status().name()));
                let _ = self.tx.send(Event::Failed(format!(
                    "write of block {block} gen {gen} failed: {}",
                    io.status().name()
                )));
                self.finished = true;
                return true;
            }
            self.free.push(io);
        }
        let Some(ch) = self.ch.as_ref() else { return busy };
        if let Some(io) = self.retry.take() {
            if let Submit::Requeue(io) = ch.submit(io, &self.cq) {
                self.retry = Some(io);
                return busy;
            }
            busy = true;
        }
        while self.stop_after_left() && !self.free.is_empty() {
            let mut io = self.free.pop().expect("checked");
            let slot = io.tag as usize;
            let block = self.pick_block();
            let gen = self.next_gen;
            self.next_gen += 1;
            self.issued += 1;
            fill_block(block, gen, &mut self.bufs[slot].bytes_mut());
            io.iovs.clear();
            io.iovs.push(IoVec::whole(self.bufs[slot].clone()));
            io.prepare(IoOp::Write, block * self.io_blocks, self.io_blocks);
            self.inflight[slot] = Some((block, gen));
            say(format_args!("ISSUE {block} {gen}"));
            busy = true;
            if let Submit::Requeue(io) = self.ch.as_ref().expect("open").submit(io, &self.cq) {
                self.retry = Some(io);
                break;
            }
        }
        if !self.stop_after_left() && self.retry.is_none() && self.in_flight() == 0 {
            self.finish();
        }
        busy
    }

    fn stop_after_left(&self) -> bool {
        self.args.stop_after.is_none_or(|n| self.issued < n)
    }

    /// `--stop-after` reached and drained: close the array bdev, stop the array, report.
    fn finish(&mut self) {
        self.finished = true;
        self.ch = None;
        self.desc = None;
        self.poller = None;
        let tx = self.tx.clone();
        self.md.stop(&self.array, move |r| {
            let _ = tx.send(Event::Stopped(r.map_err(|e| e.to_string())));
        });
    }
}

/// On the main reactor, once the array is up: opens it and starts the write poller.
fn start_writer(
    reg: &BdevRegistry,
    md: Arc<MdRegistry>,
    args: Args,
    array: String,
    tx: mpsc::Sender<Event>,
) -> Result<(), String> {
    let desc = reg
        .open(&array, true, |_| {})
        .map_err(|e| format!("open array bdev '{array}': {e}"))?;
    let info = desc.info().clone();
    let bs = info.block_size as u64;
    if !(IO_BYTES as u64).is_multiple_of(bs) {
        return Err(format!("array block size {bs} does not divide {IO_BYTES}"));
    }
    let io_blocks = IO_BYTES as u64 / bs;
    let blocks_4k = info.num_blocks / io_blocks;
    let lo = blocks_4k * args.range_start_pct / 100;
    let hi = (blocks_4k * (args.range_start_pct + args.range_len_pct) / 100).min(blocks_4k);
    if hi <= lo || hi - lo < args.qd as u64 * 2 {
        return Err(format!(
            "the write range [{lo}, {hi}) of {blocks_4k} blocks is too small"
        ));
    }
    let qd = args.qd;
    let free: Vec<IoBox> = (0..qd)
        .map(|i| {
            let mut io = IoRequest::new_boxed();
            io.tag = i as u64;
            io
        })
        .collect();
    let ch = desc.channel();
    let w = Rc::new(RefCell::new(Writer {
        rng: args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        next_gen: args.gen_start,
        args,
        md,
        array: array.clone(),
        desc: Some(desc),
        ch: Some(ch),
        cq: CompletionQueue::with_capacity(qd),
        free,
        retry: None,
        bufs: (0..qd).map(|_| DmaBuf::new(IO_BYTES)).collect(),
        inflight: vec![None; qd],
        io_blocks,
        lo,
        hi,
        issued: 0,
        tx,
        poller: None,
        finished: false,
    }));
    say(format_args!("READY {array} {blocks_4k} {lo} {hi}"));
    let w2 = w.clone();
    let handle = current().register_poller("crash_writer", move || PollStatus::from_work(w2.borrow_mut().poll()));
    w.borrow_mut().poller = Some(handle);
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    let mask = CoreMask::parse("0x1").map_err(|e| e.to_string())?;
    let runtime = Runtime::start(&mask, false, || {}).map_err(|e| e.to_string())?;
    let cores = runtime.cores();
    let reg = BdevRegistry::new(cores.clone());
    let md = MdRegistry::of(&reg);
    let (tx, rx) = mpsc::channel::<Event>();
    let main = cores.main_core();
    {
        let (reg, md, args, tx) = (reg.clone(), md.clone(), args.clone(), tx.clone());
        cores
            .run_on(main, move || {
                let mut names = Vec::new();
                for (i, file) in args.members.iter().enumerate() {
                    let name = format!("m{i}");
                    let opts = UringOpts {
                        filename: file.clone(),
                        name: name.clone(),
                        block_size: None,
                        uuid: None,
                    };
                    if let Err(e) = uring::create(&reg, &opts) {
                        let _ = tx.send(Event::Ready(Err(format!("uring bdev over '{file}': {e}"))));
                        return;
                    }
                    names.push(name);
                }
                let up = {
                    let (reg, md, args, tx) = (reg.clone(), md.clone(), args.clone(), tx.clone());
                    move |r: Result<String, String>| {
                        let r =
                            r.and_then(|array| start_writer(&reg, md, args, array.clone(), tx.clone()).map(|_| array));
                        let _ = tx.send(Event::Ready(r));
                    }
                };
                if args.create {
                    let opts = CreateOpts {
                        name: args.name.clone(),
                        level: args.level.clone(),
                        members: names,
                        chunk_kb: args.chunk_kb,
                        bitmap: Some("internal".into()),
                        assume_clean: true,
                        ..Default::default()
                    };
                    let name = args.name.clone();
                    md.create(opts, move |r| {
                        up(r.map(|_| name).map_err(|e| format!("md create: {e}")))
                    });
                } else {
                    let opts = AssembleOpts {
                        name: Some(args.name.clone()),
                        uuid: None,
                        members: Some(names),
                        force: false,
                    };
                    md.assemble(opts, move |r| up(r.map_err(|e| format!("md assemble: {e}"))));
                }
            })
            .map_err(|e| e.to_string())?;
    }
    let outcome = match rx.recv_timeout(SETUP_TIMEOUT) {
        Ok(Event::Ready(Ok(_))) => loop {
            // Without --stop-after this waits until the process is killed.
            match rx.recv() {
                Ok(Event::Stopped(r)) => {
                    if r.is_ok() {
                        say(format_args!("STOPPED"));
                    }
                    break r.map_err(|e| format!("md stop: {e}"));
                }
                Ok(Event::Failed(e)) => break Err(e),
                Ok(Event::Ready(_)) => continue,
                Err(_) => break Err("the reactor went away".into()),
            }
        },
        Ok(Event::Ready(Err(e))) | Ok(Event::Failed(e)) | Ok(Event::Stopped(Err(e))) => Err(e),
        Ok(Event::Stopped(Ok(()))) => Err("stopped before it started".into()),
        Err(_) => Err("setup did not finish in time".into()),
    };
    cores.request_stop();
    runtime.wait();
    outcome
}

fn main() {
    // md's log lines (assembly decisions, sync runs) go to stderr; RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crash_writer: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("crash_writer: {e}");
        std::process::exit(1);
    }
}
