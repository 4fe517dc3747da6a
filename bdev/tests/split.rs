//! The splitter ([`Splitter`]) driven by test policies: a scripted policy over a fake base
//! (pieces at random boundaries, some answered without a child, some kept by the layer, some
//! retried on another base, some mirrored to several bases; the base refusing or losing sends
//! at chosen points; pools of one child and one slot), property-tested for exact reassembly,
//! first-failure-wins statuses and `Requeue` only when nothing started; and a lean policy over a
//! fake base and over a malloc bdev proving that a split I/O allocates nothing.

use std::collections::VecDeque;

use keel_bdev::modules::malloc;
use keel_bdev::{
    slice_iovs, BaseId, BdevRegistry, Channel, ChildDone, Children, CompletionQueue, DmaBuf, IoBox, IoOp, IoRequest,
    IoStatus, IoVec, Parent, Sent, SgList, SplitPolicy, Splitter, Step, Submit,
};
use keel_reactor::{CoreId, TestDriver};
use proptest::prelude::*;

/// Counts allocations per thread, so the no-allocation tests can prove the split path
/// allocation-free while other tests run on other threads.
#[global_allocator]
static ALLOC: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

/// Bytes per block of the test parents.
const BS: u64 = 64;

/// What happens to one piece of a scripted parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// A child; the base completes it with this status.
    Child(IoStatus),
    /// No child: the policy answers the piece with this status.
    Answer(IoStatus),
    /// A child the layer keeps and sends later itself (a delay FIFO).
    Keep,
    /// A child that fails on base 0 and is re-prepared and sent to base 1, where it succeeds.
    RetryOnce,
}

/// A scripted parent: its pieces (ends relative to its start, increasing, the last one its
/// length) and how many copies of each piece go out (mirror-like: copies before the last move
/// the cursor by 0, the policy's parent data counts them).
#[derive(Clone, Debug)]
struct Script {
    op: IoOp,
    offset_blocks: u64,
    ends: Vec<u64>,
    pieces: Vec<Piece>,
    copies: u32,
    /// Byte boundaries of the parent's scatter list segments (increasing, inside the parent).
    segments: Vec<u64>,
}

impl Script {
    fn len_blocks(&self) -> u64 {
        *self.ends.last().unwrap()
    }

    /// The piece containing block `rel` of the parent, and its start and end.
    fn piece_at(&self, rel: u64) -> (usize, u64, u64) {
        let i = self.ends.partition_point(|&e| e <= rel);
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (i, start, self.ends[i])
    }

    /// The parent's data: byte `i` of parent `tag`.
    fn byte(tag: u64, i: u64) -> u8 {
        (tag.wrapping_mul(131) ^ i.wrapping_mul(7) ^ (i >> 8)) as u8
    }
}

/// Per-parent data of the scripted policy.
#[derive(Default, Debug)]
struct ScriptParent {
    /// The copy of the current piece to send next.
    copy: u32,
    /// Whether the parent was accepted (data given at accept comes back at finish).
    accepted: bool,
}

/// Per-child data of the scripted policy.
#[derive(Default, Clone, Copy, Debug)]
struct ScriptChild {
    piece: usize,
    start_blocks: u64,
    len_blocks: u64,
    copy: u32,
    retried: bool,
}

/// A finished piece as the policy saw it: which parent, where, which copy, and the bytes its
/// child's window held (`None` for an answered piece).
#[derive(Debug)]
struct Seen {
    parent: u64,
    start_blocks: u64,
    len_blocks: u64,
    copy: u32,
    bytes: Option<Vec<u8>>,
}

/// The scripted layer: its policy state and its fake base.
struct World {
    scripts: Vec<Script>,
    /// Send attempts so far (the base's clock for `busy` and `gone`).
    sends: usize,
    busy: Vec<usize>,
    gone: Vec<usize>,
    /// Children the base holds, with the base they went to.
    base: Vec<(IoBox, BaseId)>,
    /// Children the layer keeps.
    kept: VecDeque<(IoBox, BaseId)>,
    /// Per parent: the statuses folded in, in order (answered pieces and finished children).
    folded: Vec<Vec<IoStatus>>,
    seen: Vec<Seen>,
    finished: Vec<(IoBox, IoStatus, ScriptParent)>,
}

impl World {
    fn new(scripts: Vec<Script>, busy: Vec<usize>, gone: Vec<usize>) -> World {
        let n = scripts.len();
        World {
            scripts,
            sends: 0,
            busy,
            gone,
            base: Vec::new(),
            kept: VecDeque::new(),
            folded: vec![Vec::new(); n],
            seen: Vec::new(),
            finished: Vec::new(),
        }
    }

    fn prepare(&self, child: &mut IoRequest, parent: &IoRequest, start: u64, len: u64, base: BaseId) {
        // Base `b` keeps the parent's block `x` at `x + 1000 * b`.
        child.prepare(parent.op, parent.offset_blocks + start + 1000 * base.0 as u64, len);
        child.iovs.clear();
        if parent.op.has_data() {
            slice_iovs(&parent.iovs, start * BS, len * BS, &mut child.iovs);
        }
    }
}

fn window_bytes(iovs: &SgList) -> Vec<u8> {
    let mut out = Vec::new();
    for v in iovs {
        let b = v.buf.bytes();
        out.extend_from_slice(&b[v.offset_bytes as usize..(v.offset_bytes + v.len_bytes) as usize]);
    }
    out
}

impl SplitPolicy for World {
    type Child = ScriptChild;
    type Parent = ScriptParent;

    fn next_piece(&mut self, p: Parent<'_, ScriptParent>, children: &mut Children<'_, ScriptChild>) -> Step {
        assert!(p.data.accepted, "the data given at accept");
        let tag = p.io.tag;
        let s = &self.scripts[tag as usize];
        let rel = p.next - s.offset_blocks;
        let (i, start, end) = s.piece_at(rel);
        assert_eq!(start, rel, "the cursor is at a piece start");
        let len = end - start;
        let copies = s.copies;
        let piece = s.pieces[i];
        if let Piece::Answer(status) = piece {
            self.folded[tag as usize].push(status);
            self.seen.push(Seen {
                parent: tag,
                start_blocks: start,
                len_blocks: len,
                copy: u32::MAX,
                bytes: None,
            });
            return Step::Answered { units: len, status };
        }
        let Some((mut child, data)) = children.take() else {
            return Step::Stalled;
        };
        let copy = p.data.copy;
        let last = copy + 1 >= copies;
        let units = if last { len } else { 0 };
        p.data.copy = if last { 0 } else { copy + 1 };
        let base = BaseId(0);
        self.prepare(&mut child, p.io, start, len, base);
        *data = ScriptChild {
            piece: i,
            start_blocks: start,
            len_blocks: len,
            copy,
            retried: false,
        };
        if piece == Piece::Keep {
            self.kept.push_back((child, base));
            return Step::Kept { units };
        }
        Step::Send { child, base, units }
    }

    fn send(&mut self, base: BaseId, io: IoBox, _cq: &CompletionQueue) -> Sent {
        let k = self.sends;
        self.sends += 1;
        if self.busy.contains(&k) {
            return Sent::Busy(io);
        }
        if self.gone.contains(&k) {
            return Sent::Gone(io);
        }
        self.base.push((io, base));
        Sent::Accepted
    }

    fn child_done(&mut self, child: &mut IoRequest, data: &mut ScriptChild, p: Parent<'_, ScriptParent>) -> ChildDone {
        let tag = p.io.tag;
        let s = &self.scripts[tag as usize];
        let status = child.status();
        if s.pieces[data.piece] == Piece::RetryOnce && !data.retried && status == IoStatus::Failed {
            // Another copy: re-prepared for base 1, sent again; the parent keeps waiting.
            data.retried = true;
            let base = BaseId(1);
            self.prepare(child, p.io, data.start_blocks, data.len_blocks, base);
            return ChildDone::Resend { base };
        }
        let bytes = window_bytes(&child.iovs);
        self.seen.push(Seen {
            parent: tag,
            start_blocks: data.start_blocks,
            len_blocks: data.len_blocks,
            copy: data.copy,
            bytes: Some(bytes),
        });
        self.folded[tag as usize].push(status);
        ChildDone::Finished(status)
    }

    fn finish(&mut self, io: IoBox, status: IoStatus, data: ScriptParent) {
        self.finished.push((io, status, data));
    }
}

/// The status the base gives a child of `piece` that went to `base`.
fn base_status(piece: Piece, base: BaseId) -> IoStatus {
    match piece {
        Piece::Child(s) => s,
        Piece::RetryOnce if base == BaseId(0) => IoStatus::Failed,
        _ => IoStatus::Success,
    }
}

/// A tiny deterministic generator for completion orders.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A parent request for `s` (tag `tag`), its scatter list over fresh buffers holding its bytes.
fn parent_io(s: &Script, tag: u64) -> IoBox {
    let mut io = IoRequest::new_boxed();
    io.prepare(s.op, s.offset_blocks, s.len_blocks());
    io.tag = tag;
    let len = s.len_blocks() * BS;
    let mut cuts = vec![0];
    cuts.extend(s.segments.iter().copied().filter(|&b| b > 0 && b < len));
    cuts.push(len);
    cuts.dedup();
    for w in cuts.windows(2) {
        // Each segment in a buffer of its own, at an offset inside it.
        let (from, to) = (w[0], w[1]);
        let pad = (from % 3) as usize;
        let buf = DmaBuf::new(pad + (to - from) as usize);
        {
            let mut b = buf.bytes_mut();
            for i in from..to {
                b[pad + (i - from) as usize] = Script::byte(tag, i);
            }
        }
        io.iovs.push(IoVec {
            buf,
            offset_bytes: pad as u32,
            len_bytes: (to - from) as u32,
        });
    }
    io
}

/// Knobs of one run.
#[derive(Clone, Debug)]
struct Run {
    children: usize,
    parents: usize,
    busy: Vec<usize>,
    gone: Vec<usize>,
    seed: u64,
}

/// Drives `scripts` through a splitter to the end and checks every property; returns the world
/// for more checks.
fn run(scripts: Vec<Script>, knobs: &Run) -> World {
    let n = scripts.len();
    let mut split: Splitter<ScriptChild, ScriptParent> = Splitter::new(knobs.children, knobs.parents, 4);
    let cq = CompletionQueue::with_capacity(16);
    let mut waiting: VecDeque<IoBox> = scripts
        .iter()
        .enumerate()
        .map(|(i, s)| parent_io(s, i as u64))
        .collect();
    let mut w = World::new(scripts, knobs.busy.clone(), knobs.gone.clone());
    let mut rng = Rng(knobs.seed | 1);
    let mut idle_rounds = 0;
    while w.finished.len() < n {
        let mut progress = false;
        // Submit in order while the splitter takes them.
        while let Some(io) = waiting.pop_front() {
            let could = split.can_accept();
            let before = (io.tag, io.op, io.offset_blocks, io.num_blocks, io.iovs.len());
            let (start, end) = (io.offset_blocks, io.offset_blocks + io.num_blocks);
            let data = ScriptParent {
                copy: 0,
                accepted: true,
            };
            match split.accept(io, start, end, data, &mut w, &cq) {
                Submit::Accepted => {
                    assert!(could, "accepted without a free slot and child");
                    progress = true;
                }
                Submit::Requeue(io) => {
                    assert!(!could, "requeued although a slot and a child were free");
                    assert_eq!(before, (io.tag, io.op, io.offset_blocks, io.num_blocks, io.iovs.len()));
                    waiting.push_front(io);
                    break;
                }
            }
        }
        // One event: a completion on the queue (a child that was gone), a child the base
        // completes (in random order), or a kept child the layer releases.
        if let Some(io) = cq.pop() {
            assert_eq!(io.status(), IoStatus::Removed);
            split.child_done(io, &mut w, &cq);
            progress = true;
        } else if !w.base.is_empty() {
            let (mut io, base) = w.base.swap_remove(rng.below(w.base.len()));
            let tag = io.tag;
            // Which parent, which piece: from what the child's range says.
            let parent = w
                .scripts
                .iter()
                .position(|s| {
                    let at = io.offset_blocks - 1000 * base.0 as u64;
                    at >= s.offset_blocks && at < s.offset_blocks + s.len_blocks()
                })
                .expect("a child inside a parent");
            let s = &w.scripts[parent];
            let (i, _, _) = s.piece_at(io.offset_blocks - 1000 * base.0 as u64 - s.offset_blocks);
            io.set_status(base_status(s.pieces[i], base));
            assert_eq!(io.tag, tag);
            split.child_done(io, &mut w, &cq);
            progress = true;
        } else if let Some((io, base)) = w.kept.pop_front() {
            // Half of them sent through the splitter, the others by the layer itself.
            if rng.below(2) == 0 {
                split.send(io, base, &mut w, &cq);
            } else {
                match w.send(base, io, &cq) {
                    Sent::Accepted => {}
                    Sent::Busy(io) => split.park(io, base),
                    // The layer tries once more, through the splitter this time.
                    Sent::Gone(io) => split.send(io, base, &mut w, &cq),
                }
            }
            progress = true;
        }
        if split.poll(&mut w, &cq) > 0 {
            progress = true;
        }
        idle_rounds = if progress { 0 } else { idle_rounds + 1 };
        assert!(idle_rounds < 100, "stuck: {} of {n} parents finished", w.finished.len());
    }
    assert!(waiting.is_empty());
    assert_eq!(split.parents_in_flight(), 0);
    assert_eq!(split.children_out(), 0);
    assert!(split.is_idle() && split.can_accept());
    check(&w);
    w
}

/// Every parent finished once, with the first failure folded in, its pieces reassembling it
/// exactly (every copy), each child's window holding the parent's bytes.
fn check(w: &World) {
    let mut done: Vec<u64> = w.finished.iter().map(|(io, _, _)| io.tag).collect();
    done.sort_unstable();
    assert_eq!(
        done,
        (0..w.scripts.len() as u64).collect::<Vec<_>>(),
        "each parent once"
    );
    for (io, status, data) in &w.finished {
        let tag = io.tag as usize;
        let s = &w.scripts[tag];
        assert!(data.accepted, "the parent's data comes back");
        assert_eq!(
            (io.op, io.offset_blocks, io.num_blocks),
            (s.op, s.offset_blocks, s.len_blocks())
        );
        let want = w.folded[tag]
            .iter()
            .copied()
            .find(|&st| st != IoStatus::Success)
            .unwrap_or(IoStatus::Success);
        assert_eq!(*status, want, "parent {tag}: first failure wins ({:?})", w.folded[tag]);
        for copy in 0..s.copies {
            let mut pieces: Vec<&Seen> = w
                .seen
                .iter()
                .filter(|x| x.parent == io.tag && (x.copy == copy || x.copy == u32::MAX))
                .collect();
            pieces.sort_by_key(|x| x.start_blocks);
            let mut at = 0;
            for x in pieces {
                assert_eq!(x.start_blocks, at, "parent {tag} copy {copy}: pieces meet");
                if let Some(bytes) = &x.bytes {
                    if s.op.has_data() {
                        let want: Vec<u8> = (x.start_blocks * BS..(x.start_blocks + x.len_blocks) * BS)
                            .map(|i| Script::byte(io.tag, i))
                            .collect();
                        assert_eq!(
                            bytes, &want,
                            "parent {tag}: the window of {}+{}",
                            x.start_blocks, x.len_blocks
                        );
                    } else {
                        assert!(bytes.is_empty());
                    }
                }
                at += x.len_blocks;
            }
            assert_eq!(at, s.len_blocks(), "parent {tag} copy {copy}: pieces cover the parent");
        }
    }
}

fn script(len: u64, cuts: &[u64], pieces: &[Piece], copies: u32, offset_blocks: u64) -> Script {
    let mut ends: Vec<u64> = cuts.iter().copied().filter(|&c| c > 0 && c < len).collect();
    ends.sort_unstable();
    ends.dedup();
    ends.push(len);
    let pieces = (0..ends.len()).map(|i| pieces[i % pieces.len()]).collect();
    Script {
        op: IoOp::Read,
        offset_blocks,
        ends,
        pieces,
        copies,
        segments: vec![],
    }
}

fn knobs(children: usize, parents: usize) -> Run {
    Run {
        children,
        parents,
        busy: vec![],
        gone: vec![],
        seed: 7,
    }
}

#[test]
fn pieces_at_their_boundaries_reassemble_the_parent() {
    let mut s = script(16, &[4, 8, 12], &[Piece::Child(IoStatus::Success)], 1, 100);
    s.segments = vec![3 * BS + 5, 9 * BS];
    let w = run(vec![s], &knobs(8, 2));
    assert_eq!(w.seen.len(), 4);
    assert_eq!(w.finished[0].1, IoStatus::Success);
}

#[test]
fn answered_pieces_finish_inside_accept() {
    let mut split: Splitter<ScriptChild, ScriptParent> = Splitter::new(1, 1, 1);
    let cq = CompletionQueue::with_capacity(1);
    let s = script(
        8,
        &[4],
        &[Piece::Answer(IoStatus::Success), Piece::Answer(IoStatus::Failed)],
        1,
        0,
    );
    let io = parent_io(&s, 0);
    let mut w = World::new(vec![s], vec![], vec![]);
    let data = ScriptParent {
        copy: 0,
        accepted: true,
    };
    assert!(matches!(split.accept(io, 0, 8, data, &mut w, &cq), Submit::Accepted));
    assert_eq!(w.finished.len(), 1, "no child out: finished at once");
    assert_eq!(w.finished[0].1, IoStatus::Failed);
    assert_eq!(split.parents_in_flight(), 0);
    assert!(cq.is_empty());
}

#[test]
fn requeue_only_when_nothing_can_start() {
    let mut split: Splitter<ScriptChild, ScriptParent> = Splitter::new(1, 1, 1);
    let cq = CompletionQueue::with_capacity(1);
    let s = script(8, &[4], &[Piece::Child(IoStatus::Success)], 1, 0);
    let mut w = World::new(vec![s.clone(), s.clone()], vec![], vec![]);
    let data = || ScriptParent {
        copy: 0,
        accepted: true,
    };
    // The first parent takes the slot and the only child; its second piece waits.
    assert!(matches!(
        split.accept(parent_io(&s, 0), 0, 8, data(), &mut w, &cq),
        Submit::Accepted
    ));
    assert_eq!((w.base.len(), split.children_out(), split.is_idle()), (1, 1, false));
    let Submit::Requeue(io) = split.accept(parent_io(&s, 1), 0, 8, data(), &mut w, &cq) else {
        panic!("no slot, no child: requeue");
    };
    assert_eq!(io.tag, 1);
    // The child comes back: the waiting parent continues from the poller.
    let (mut c, _) = w.base.pop().unwrap();
    c.set_status(IoStatus::Success);
    split.child_done(c, &mut w, &cq);
    assert!(w.finished.is_empty());
    assert_eq!(split.poll(&mut w, &cq), 1);
    let (mut c, _) = w.base.pop().unwrap();
    c.set_status(IoStatus::Success);
    split.child_done(c, &mut w, &cq);
    assert_eq!(w.finished.len(), 1);
    assert_eq!(split.poll(&mut w, &cq), 0, "nothing left to do reports no work");
}

#[test]
fn a_retried_child_is_resent_not_finished() {
    let s = script(8, &[2, 6], &[Piece::Child(IoStatus::Success), Piece::RetryOnce], 1, 0);
    let w = run(vec![s], &knobs(4, 1));
    assert_eq!(w.finished[0].1, IoStatus::Success);
    // Three pieces, one of them sent twice.
    assert_eq!((w.seen.len(), w.sends), (3, 4));
}

#[test]
fn kept_children_count_as_out_and_may_be_parked() {
    let s = script(12, &[4, 8], &[Piece::Keep], 1, 0);
    // The first kept child the layer sends itself is refused: parked, then sent by the poller.
    let mut k = knobs(2, 1);
    k.busy = vec![0];
    let w = run(vec![s], &k);
    assert_eq!(w.finished[0].1, IoStatus::Success);
    assert_eq!(w.sends, 4);
}

#[test]
fn a_gone_base_fails_the_child_through_the_queue() {
    let s = script(8, &[4], &[Piece::Child(IoStatus::Success)], 1, 0);
    let mut k = knobs(4, 1);
    k.gone = vec![1];
    let w = run(vec![s], &k);
    assert_eq!(w.finished[0].1, IoStatus::Removed);
}

#[test]
fn mirrored_pieces_go_to_every_copy() {
    let s = script(8, &[3], &[Piece::Child(IoStatus::Success)], 3, 0);
    let w = run(vec![s], &knobs(2, 1));
    assert_eq!(w.seen.len(), 6, "two pieces, three copies each");
}

#[test]
fn an_answered_failure_folds_before_later_child_failures() {
    let s = script(
        16,
        &[4, 8, 12],
        &[
            Piece::Child(IoStatus::Success),
            Piece::Child(IoStatus::Failed),
            Piece::Answer(IoStatus::Unsupported),
            Piece::Child(IoStatus::Aborted),
        ],
        1,
        0,
    );
    for seed in 1..20 {
        let mut k = knobs(4, 1);
        k.seed = seed;
        let w = run(vec![s.clone()], &k);
        // The answered piece is folded while issuing, before any child is back.
        assert_eq!(w.finished[0].1, IoStatus::Unsupported, "seed {seed}");
    }
}

/// Every point at which the base refuses a send (and several in a row), and every point at which
/// it is gone, with pools of one child and one slot up to roomy ones.
#[test]
fn requeue_and_exhaustion_at_every_point() {
    let scripts = vec![
        script(10, &[3, 4, 9], &[Piece::Child(IoStatus::Success), Piece::Keep], 1, 0),
        script(
            7,
            &[1, 2, 5],
            &[Piece::RetryOnce, Piece::Answer(IoStatus::Success)],
            2,
            20,
        ),
        script(5, &[], &[Piece::Child(IoStatus::Failed)], 1, 40),
    ];
    let total = run(scripts.clone(), &knobs(16, 4)).sends;
    for children in 1..=3 {
        for parents in 1..=2 {
            for at in 0..total + 2 {
                for burst in [1, 3] {
                    let mut k = knobs(children, parents);
                    k.busy = (at..at + burst).collect();
                    run(scripts.clone(), &k);
                }
                let mut k = knobs(children, parents);
                k.gone = vec![at];
                run(scripts.clone(), &k);
            }
        }
    }
}

fn arb_status() -> impl Strategy<Value = IoStatus> {
    prop_oneof![
        6 => Just(IoStatus::Success),
        1 => Just(IoStatus::Failed),
        1 => Just(IoStatus::Unsupported),
        1 => Just(IoStatus::Aborted),
    ]
}

fn arb_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => arb_status().prop_map(Piece::Child),
        2 => arb_status().prop_map(Piece::Answer),
        1 => Just(Piece::Keep),
        1 => Just(Piece::RetryOnce),
    ]
}

fn arb_script() -> impl Strategy<Value = Script> {
    (1u64..=48)
        .prop_flat_map(|len| {
            (
                Just(len),
                proptest::collection::vec(1..len.max(2), 0..8),
                proptest::collection::vec(arb_piece(), 1..6),
                1u32..=3,
                proptest::collection::vec(1..len * BS, 0..4),
                prop_oneof![Just(IoOp::Read), Just(IoOp::Write), Just(IoOp::Unmap)],
            )
        })
        .prop_map(|(len, cuts, pieces, copies, segments, op)| {
            let mut s = script(len, &cuts, &pieces, copies, 0);
            let mut segments = segments;
            segments.sort_unstable();
            s.segments = segments;
            s.op = op;
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random parents cut at random boundaries, with random outcomes per piece, random
    /// completion orders, the base refusing or losing random sends, and pools from tiny to
    /// roomy: every parent finishes once, reassembled exactly, with the first failure.
    #[test]
    fn random_splits_reassemble_with_the_first_failure(
        scripts in proptest::collection::vec(arb_script(), 1..6),
        children in 1usize..=5,
        parents in 1usize..=4,
        busy in proptest::collection::vec(0usize..60, 0..6),
        gone in proptest::collection::vec(0usize..60, 0..2),
        seed in any::<u64>(),
    ) {
        // Parents far apart so a child's range names its parent.
        let scripts = scripts
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.offset_blocks = 100 * i as u64;
                s
            })
            .collect();
        run(scripts, &Run { children, parents, busy, gone, seed });
    }
}

/// A policy with fixed pieces of `PIECE_BLOCKS` over two fake bases that hold what they take in
/// preallocated queues: the shape of dm-striped's split path without dm.
struct Lean {
    bases: [VecDeque<IoBox>; 2],
    /// Every `refuse_every`-th send is refused.
    refuse_every: u64,
    sends: u64,
    done: Vec<IoBox>,
    failed: u64,
}

const PIECE_BLOCKS: u64 = 4;

impl SplitPolicy for Lean {
    type Child = u64;
    type Parent = ();

    #[inline]
    fn next_piece(&mut self, p: Parent<'_, ()>, children: &mut Children<'_, u64>) -> Step {
        let Some((mut child, data)) = children.take() else {
            return Step::Stalled;
        };
        let n = PIECE_BLOCKS.min(p.end - p.next);
        let at = p.next - p.io.offset_blocks;
        child.prepare(p.io.op, p.next, n);
        child.iovs.clear();
        slice_iovs(&p.io.iovs, at * BS, n * BS, &mut child.iovs);
        *data = at;
        Step::Send {
            child,
            base: BaseId(((p.next / PIECE_BLOCKS) & 1) as u32),
            units: n,
        }
    }

    fn send(&mut self, base: BaseId, io: IoBox, _cq: &CompletionQueue) -> Sent {
        self.sends += 1;
        if self.sends.is_multiple_of(self.refuse_every) {
            return Sent::Busy(io);
        }
        self.bases[base.0 as usize].push_back(io);
        Sent::Accepted
    }

    fn child_done(&mut self, child: &mut IoRequest, _data: &mut u64, _p: Parent<'_, ()>) -> ChildDone {
        ChildDone::Finished(child.status())
    }

    fn finish(&mut self, io: IoBox, status: IoStatus, _data: ()) {
        if status != IoStatus::Success {
            self.failed += 1;
        }
        self.done.push(io);
    }
}

/// Split I/O through the lean policy: tiny pools (the pending queue), refused sends (the retry
/// queue), one parent in sixteen failing a piece. Returns the allocations of the measured rounds.
fn lean_rounds(split: &mut Splitter<u64, ()>, lean: &mut Lean, parents: &mut Vec<IoBox>, rounds: u64) -> u64 {
    let cq = CompletionQueue::with_capacity(4);
    let before = keel_testkit::thread_allocations();
    let mut finished = 0;
    let mut k = 0u64;
    while finished < rounds {
        while let Some(mut io) = parents.pop() {
            let at = (k % 64) * 16;
            io.prepare(IoOp::Read, at, 16);
            k += 1;
            if let Submit::Requeue(io) = split.accept(io, at, at + 16, (), lean, &cq) {
                parents.push(io);
                break;
            }
        }
        for b in 0..2 {
            if let Some(mut c) = lean.bases[b].pop_front() {
                let fail = c.offset_blocks % 64 == 4 && c.offset_blocks % 256 == 4;
                c.set_status(if fail { IoStatus::Failed } else { IoStatus::Success });
                split.child_done(c, lean, &cq);
            }
        }
        split.poll(lean, &cq);
        while let Some(io) = lean.done.pop() {
            parents.push(io);
            finished += 1;
        }
    }
    keel_testkit::thread_allocations() - before
}

#[test]
fn a_split_io_allocates_nothing() {
    let mut split: Splitter<u64, ()> = Splitter::new(3, 2, 8);
    let mut lean = Lean {
        bases: [VecDeque::with_capacity(8), VecDeque::with_capacity(8)],
        refuse_every: 7,
        sends: 0,
        done: Vec::with_capacity(8),
        failed: 0,
    };
    let mut parents: Vec<IoBox> = (0..4)
        .map(|_| {
            let mut io = IoRequest::new_boxed();
            io.iovs.push(IoVec::whole(DmaBuf::new((16 * BS) as usize)));
            io
        })
        .collect();
    lean_rounds(&mut split, &mut lean, &mut parents, 100);
    let before = keel_testkit::thread_allocations();
    drop(std::hint::black_box(Box::new(0u64)));
    assert_eq!(keel_testkit::thread_allocations(), before + 1, "the counter counts");
    let failed0 = lean.failed;
    let allocs = lean_rounds(&mut split, &mut lean, &mut parents, 10_000);
    assert!(lean.failed > failed0, "failing pieces were exercised");
    assert_eq!(allocs, 0, "allocations per split I/O");
}

/// A policy splitting into `CHUNK_BLOCKS` pieces over one malloc bdev: real children through a
/// real channel, data written and read back through splits at other boundaries.
struct OverMalloc {
    ch: Channel,
    chunk_blocks: u64,
    done: Vec<(IoBox, IoStatus)>,
}

const MALLOC_BS: u64 = 512;

impl SplitPolicy for OverMalloc {
    type Child = ();
    type Parent = ();

    fn next_piece(&mut self, p: Parent<'_, ()>, children: &mut Children<'_, ()>) -> Step {
        let Some((mut child, _)) = children.take() else {
            return Step::Stalled;
        };
        let n = (self.chunk_blocks - p.next % self.chunk_blocks).min(p.end - p.next);
        child.prepare(p.io.op, p.next, n);
        child.iovs.clear();
        let at = (p.next - p.io.offset_blocks) * MALLOC_BS;
        slice_iovs(&p.io.iovs, at, n * MALLOC_BS, &mut child.iovs);
        Step::Send {
            child,
            base: BaseId(0),
            units: n,
        }
    }

    fn send(&mut self, _base: BaseId, io: IoBox, cq: &CompletionQueue) -> Sent {
        self.ch.submit(io, cq).into()
    }

    fn child_done(&mut self, child: &mut IoRequest, _data: &mut (), _p: Parent<'_, ()>) -> ChildDone {
        ChildDone::Finished(child.status())
    }

    fn finish(&mut self, io: IoBox, status: IoStatus, _data: ()) {
        self.done.push((io, status));
    }
}

#[test]
fn split_io_over_malloc_moves_the_data_and_allocates_nothing() {
    const BLOCKS: u64 = 256;
    const DEPTH: usize = 8;
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("M0", BLOCKS, MALLOC_BS as u32)).unwrap();
    let desc = reg.open("M0", true, |_| {}).unwrap();
    d.enter(CoreId(0), || {
        let cq = CompletionQueue::with_capacity(64);
        let mut split: Splitter<(), ()> = Splitter::new(6, DEPTH, 16);
        let mut pol = OverMalloc {
            ch: desc.channel(),
            chunk_blocks: 8,
            done: Vec::with_capacity(DEPTH),
        };
        // Parents of 32 blocks (16 KiB): two segments each, so windows cross buffers.
        let bufs: Vec<(DmaBuf, DmaBuf)> = (0..DEPTH)
            .map(|_| (DmaBuf::new(5 * 1024), DmaBuf::new(11 * 1024)))
            .collect();
        // A parent's tag is its buffer pair, for good.
        let mut free: Vec<IoBox> = (0..DEPTH)
            .map(|i| {
                let mut io = IoRequest::new_boxed();
                io.tag = i as u64;
                io
            })
            .collect();
        // Keeps DEPTH parents in flight over `rounds` completions of `op`, each at block
        // `(k * 32 + skew) % (BLOCKS - 32)`; `fill` sets a write's data, `check` reads a read's.
        let mut rounds = |op: IoOp, rounds: u64, skew: u64, chunk: u64, check: bool| -> u64 {
            pol.chunk_blocks = chunk;
            let (mut k, mut finished, mut bad) = (0u64, 0u64, 0u64);
            while finished < rounds {
                while let Some(mut io) = free.pop() {
                    let i = io.tag as usize % DEPTH;
                    let at = (k * 32 + skew) % (BLOCKS - 32);
                    k += 1;
                    io.iovs.clear();
                    io.iovs.push(IoVec::whole(bufs[i].0.clone()));
                    io.iovs.push(IoVec::whole(bufs[i].1.clone()));
                    io.prepare(op, at, 32);
                    if op == IoOp::Write {
                        for (j, v) in io.iovs.iter().enumerate() {
                            let mut b = v.buf.bytes_mut();
                            let base = if j == 0 { 0 } else { 5 * 1024 };
                            for (x, byte) in b.iter_mut().enumerate() {
                                // Block `at + pos / 512` holds its own number in every byte.
                                *byte = (at + (base + x as u64) / MALLOC_BS) as u8;
                            }
                        }
                    }
                    if let Submit::Requeue(io) = split.accept(io, at, at + 32, (), &mut pol, &cq) {
                        free.push(io);
                        break;
                    }
                }
                d.turn();
                while let Some(io) = cq.pop() {
                    split.child_done(io, &mut pol, &cq);
                }
                split.poll(&mut pol, &cq);
                while let Some((io, status)) = pol.done.pop() {
                    assert_eq!(status, IoStatus::Success);
                    if check {
                        let at = io.offset_blocks;
                        for (j, v) in io.iovs.iter().enumerate() {
                            let b = v.buf.bytes();
                            let base = if j == 0 { 0 } else { 5 * 1024 };
                            bad += b
                                .iter()
                                .enumerate()
                                .filter(|&(x, &byte)| byte != (at + (base + x as u64) / MALLOC_BS) as u8)
                                .count() as u64;
                        }
                    }
                    free.push(io);
                    finished += 1;
                }
            }
            bad
        };
        // Write every block through 8-block pieces, read it back through 3-block pieces.
        rounds(IoOp::Write, 64, 0, 8, false);
        assert_eq!(rounds(IoOp::Read, 64, 0, 3, true), 0, "data read back through splits");
        // Warm, then measure: no allocation per split I/O.
        rounds(IoOp::Read, 200, 8, 8, false);
        let before = keel_testkit::thread_allocations();
        drop(std::hint::black_box(Box::new(0u64)));
        assert_eq!(keel_testkit::thread_allocations(), before + 1, "the counter counts");
        let before = keel_testkit::thread_allocations();
        rounds(IoOp::Read, 4000, 8, 8, false);
        rounds(IoOp::Write, 4000, 4, 4, false);
        assert_eq!(
            keel_testkit::thread_allocations() - before,
            0,
            "allocations per split I/O"
        );
    });
}
