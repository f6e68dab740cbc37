//! The conformance suite every sequencer backend runs (feature `conformance`).
//!
//! Each function takes a service satisfying [`SequencerService`] and panics with a message
//! when the backend breaks the contract, as a test would. Conversations get fresh unique ids,
//! so a suite can run against a backend that already holds state (a shared Redis).
//!
//! The functions that need no floor are bundled in [`run`]; the floor checks, for backends
//! that read one, in [`run_with_floor`], which builds a fresh service around a [`TestFloor`]
//! for each check.
//!
//! ```
//! use messenger_sequencer::memory::{MemorySequencer, NoFloor};
//! use messenger_sequencer::{conformance, Sequencer};
//!
//! # #[tokio::main]
//! # async fn main() {
//! conformance::run(&Sequencer::new(MemorySequencer::new(NoFloor))).await;
//! conformance::run_with_floor(|floor| Sequencer::new(MemorySequencer::new(floor))).await;
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use messenger_core::sequencer::{FenceSeq, NextSeq, SeqFloor, SequencerService};
use messenger_core::{ConversationId, Error, ErrorKind, Seq, Timestamp, call};
use tokio::sync::Semaphore;

/// Tasks allocating at once in [`concurrent_allocations`].
pub const CONCURRENT_TASKS: usize = 32;
/// Allocations per task in [`concurrent_allocations`].
pub const ALLOCATIONS_PER_TASK: usize = 200;

/// Runs every check that needs no floor. Fresh conversations must start at seq 1 (a backend
/// with a floor must be given one that answers zero, such as `NoFloor`).
pub async fn run<S: SequencerService>(sequencer: &S) {
    increasing_per_conversation(sequencer).await;
    independent_conversations(sequencer).await;
    concurrent_allocations(sequencer).await;
    fence_moves_forward_never_backward(sequencer).await;
    fence_before_first_use(sequencer).await;
}

/// Runs every floor check, each on a fresh service that `make` builds around a [`TestFloor`].
pub async fn run_with_floor<S, M>(mut make: M)
where
    S: SequencerService,
    M: FnMut(TestFloor) -> S,
{
    floor_respected_on_first_use(&mut make).await;
    floor_read_once_by_concurrent_first_uses(&mut make).await;
    floor_error_is_returned_and_retried(&mut make).await;
}

/// A conversation id no other check (and no earlier run) used.
pub fn unique_conversation(label: &str) -> ConversationId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let id = format!(
        "g:conformance-{label}-{}-{}-{n}",
        std::process::id(),
        Timestamp::now().as_millis()
    );
    ConversationId::new(&id).unwrap_or_else(|err| panic!("{id} is not a valid id: {err}"))
}

async fn next<S: SequencerService>(sequencer: &S, conversation: &ConversationId) -> Seq {
    call(
        sequencer,
        NextSeq {
            conversation: conversation.clone(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("next seq of {conversation} failed: {err}"))
}

async fn fence<S: SequencerService>(sequencer: &S, conversation: &ConversationId, at_least: u64) {
    call(
        sequencer,
        FenceSeq {
            conversation: conversation.clone(),
            at_least: Seq(at_least),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("fence of {conversation} at {at_least} failed: {err}"));
}

/// Sequential allocations of one conversation are 1, 2, 3, ...
pub async fn increasing_per_conversation<S: SequencerService>(sequencer: &S) {
    let chat = unique_conversation("increasing");
    for expected in 1..=100 {
        assert_eq!(
            next(sequencer, &chat).await,
            Seq(expected),
            "allocation {expected}"
        );
    }
}

/// Allocations in one conversation do not move another's counter.
pub async fn independent_conversations<S: SequencerService>(sequencer: &S) {
    let a = unique_conversation("independent-a");
    let b = unique_conversation("independent-b");
    for _ in 0..10 {
        next(sequencer, &a).await;
    }
    assert_eq!(
        next(sequencer, &b).await,
        Seq(1),
        "b starts at 1 after 10 in a"
    );
    for expected in 11..=20 {
        assert_eq!(next(sequencer, &a).await, Seq(expected));
        assert_eq!(next(sequencer, &b).await, Seq(expected - 9));
    }
    fence(sequencer, &a, 1_000).await;
    assert_eq!(
        next(sequencer, &b).await,
        Seq(12),
        "a fence of a does not move b"
    );
}

/// [`CONCURRENT_TASKS`] tasks allocate [`ALLOCATIONS_PER_TASK`] each in one conversation at
/// once: every number is distinct, each task sees its own numbers increase, and together they
/// are exactly `1..=tasks × per_task` (no gap: nothing was cancelled).
///
/// Needs a multi-threaded or current-thread tokio runtime (it spawns tasks).
pub async fn concurrent_allocations<S: SequencerService>(sequencer: &S) {
    let chat = unique_conversation("concurrent");
    let tasks: Vec<_> = (0..CONCURRENT_TASKS)
        .map(|_| {
            let sequencer = sequencer.clone();
            let chat = chat.clone();
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(ALLOCATIONS_PER_TASK);
                for _ in 0..ALLOCATIONS_PER_TASK {
                    seen.push(next(&sequencer, &chat).await);
                }
                seen
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for task in tasks {
        let seen = task
            .await
            .unwrap_or_else(|err| panic!("an allocating task failed: {err}"));
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "one task's allocations must increase"
        );
        for seq in seen {
            assert!(all.insert(seq), "{seq} was handed out twice");
        }
    }
    let total = (CONCURRENT_TASKS * ALLOCATIONS_PER_TASK) as u64;
    let expected: BTreeSet<Seq> = (1..=total).map(Seq).collect();
    assert_eq!(all, expected, "allocations must be exactly 1..={total}");
}

/// A fence moves the counter past `at_least`; a lower fence changes nothing.
pub async fn fence_moves_forward_never_backward<S: SequencerService>(sequencer: &S) {
    let chat = unique_conversation("fence");
    assert_eq!(next(sequencer, &chat).await, Seq(1));
    fence(sequencer, &chat, 100).await;
    assert_eq!(
        next(sequencer, &chat).await,
        Seq(101),
        "next is above the fence"
    );
    fence(sequencer, &chat, 50).await;
    assert_eq!(
        next(sequencer, &chat).await,
        Seq(102),
        "a lower fence is ignored"
    );
    fence(sequencer, &chat, 102).await;
    assert_eq!(
        next(sequencer, &chat).await,
        Seq(103),
        "a fence at the head is harmless"
    );
    fence(sequencer, &chat, 103).await;
    fence(sequencer, &chat, 103).await;
    assert_eq!(
        next(sequencer, &chat).await,
        Seq(104),
        "fences are idempotent"
    );
}

/// A fence on a conversation never used before applies to its first allocation.
pub async fn fence_before_first_use<S: SequencerService>(sequencer: &S) {
    let chat = unique_conversation("fence-first");
    fence(sequencer, &chat, 7).await;
    assert_eq!(next(sequencer, &chat).await, Seq(8));
}

/// The first allocation of a conversation is above its floor; later ones continue from there;
/// a fence below the floor changes nothing, one above it wins.
pub async fn floor_respected_on_first_use<S, M>(make: &mut M)
where
    S: SequencerService,
    M: FnMut(TestFloor) -> S,
{
    let floor = TestFloor::new();
    let sequencer = make(floor.clone());
    let chat = unique_conversation("floor");
    let fenced = unique_conversation("floor-fenced-low");
    let fenced_high = unique_conversation("floor-fenced-high");
    floor.set(&chat, Seq(41));
    floor.set(&fenced, Seq(30));
    floor.set(&fenced_high, Seq(30));

    assert_eq!(
        next(&sequencer, &chat).await,
        Seq(42),
        "first is above the floor"
    );
    assert_eq!(next(&sequencer, &chat).await, Seq(43));
    assert_eq!(floor.reads(&chat), 1, "the floor is read on first use only");

    fence(&sequencer, &fenced, 5).await;
    assert_eq!(
        next(&sequencer, &fenced).await,
        Seq(31),
        "a low fence does not hide the floor"
    );
    fence(&sequencer, &fenced_high, 90).await;
    assert_eq!(
        next(&sequencer, &fenced_high).await,
        Seq(91),
        "a high fence wins"
    );

    let untouched = unique_conversation("floor-none");
    assert_eq!(
        next(&sequencer, &untouched).await,
        Seq(1),
        "no floor set means zero"
    );
}

/// Many first uses of one conversation at once read the floor once and share it: numbers
/// are distinct and exactly `floor + 1..=floor + n`.
pub async fn floor_read_once_by_concurrent_first_uses<S, M>(make: &mut M)
where
    S: SequencerService,
    M: FnMut(TestFloor) -> S,
{
    const TASKS: u64 = 16;
    let floor = TestFloor::new();
    let sequencer = make(floor.clone());
    let chat = unique_conversation("floor-concurrent");
    floor.set(&chat, Seq(1_000));
    floor.hold();

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let sequencer = sequencer.clone();
            let chat = chat.clone();
            tokio::spawn(async move { next(&sequencer, &chat).await })
        })
        .collect();
    // Wait until one read is in flight, give the others a chance to pile up behind it, then
    // let it finish. The assertions hold whatever the schedule.
    floor.wait_for_read().await;
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
    floor.release();

    let mut all = BTreeSet::new();
    for task in tasks {
        let seq = task
            .await
            .unwrap_or_else(|err| panic!("an allocating task failed: {err}"));
        assert!(all.insert(seq), "{seq} was handed out twice");
    }
    let expected: BTreeSet<Seq> = (1_001..=1_000 + TASKS).map(Seq).collect();
    assert_eq!(all, expected);
    assert_eq!(
        floor.reads(&chat),
        1,
        "concurrent first uses read the floor once"
    );
}

/// A failing floor read fails the allocation with the floor's error kind and allocates
/// nothing; the next call reads the floor again.
pub async fn floor_error_is_returned_and_retried<S, M>(make: &mut M)
where
    S: SequencerService,
    M: FnMut(TestFloor) -> S,
{
    let floor = TestFloor::new();
    let sequencer = make(floor.clone());
    let chat = unique_conversation("floor-error");
    floor.set(&chat, Seq(9));
    floor.fail_next(1);

    let err = call(
        &sequencer,
        NextSeq {
            conversation: chat.clone(),
        },
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("an allocation whose floor read failed must fail"));
    assert_eq!(
        err.kind(),
        ErrorKind::Unavailable,
        "the floor's error kind is kept"
    );
    assert_eq!(
        next(&sequencer, &chat).await,
        Seq(10),
        "the floor is read again"
    );
    assert_eq!(floor.reads(&chat), 2);
}

/// A [`SeqFloor`] for tests: floors set per conversation (zero otherwise), a count of reads,
/// scripted failures and a gate to hold reads in flight.
///
/// Clones share state, so a test keeps one clone and gives the other to the sequencer.
#[derive(Clone)]
pub struct TestFloor {
    inner: Arc<TestFloorInner>,
}

struct TestFloorInner {
    state: Mutex<TestFloorState>,
    /// Permits readers through while not held.
    gate: Semaphore,
    /// One permit added per read started.
    started: Semaphore,
}

#[derive(Default)]
struct TestFloorState {
    floors: HashMap<ConversationId, Seq>,
    reads: HashMap<ConversationId, usize>,
    failures_left: usize,
    held: bool,
}

impl TestFloor {
    /// A floor answering zero everywhere, with no failures and no gate.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(TestFloorInner {
                state: Mutex::new(TestFloorState::default()),
                gate: Semaphore::new(0),
                started: Semaphore::new(0),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TestFloorState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the floor of `conversation`.
    pub fn set(&self, conversation: &ConversationId, floor: Seq) {
        self.state().floors.insert(conversation.clone(), floor);
    }

    /// How many reads of `conversation` started.
    pub fn reads(&self, conversation: &ConversationId) -> usize {
        self.state().reads.get(conversation).copied().unwrap_or(0)
    }

    /// Makes the next `count` reads fail with [`ErrorKind::Unavailable`].
    pub fn fail_next(&self, count: usize) {
        self.state().failures_left = count;
    }

    /// Holds every read in flight until [`release`](Self::release).
    pub fn hold(&self) {
        self.state().held = true;
    }

    /// Lets held and future reads finish.
    pub fn release(&self) {
        self.state().held = false;
        self.inner.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Waits until a read has started (one call consumes one started read).
    pub async fn wait_for_read(&self) {
        if let Ok(permit) = self.inner.started.acquire().await {
            permit.forget();
        }
    }
}

impl Default for TestFloor {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TestFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("TestFloor")
            .field("floors", &state.floors)
            .field("reads", &state.reads)
            .field("failures_left", &state.failures_left)
            .field("held", &state.held)
            .finish()
    }
}

impl SeqFloor for TestFloor {
    async fn floor(&self, conversation: &ConversationId) -> Result<Seq, Error> {
        let (floor, fail, held) = {
            let mut state = self.state();
            *state.reads.entry(conversation.clone()).or_default() += 1;
            let fail = state.failures_left > 0;
            if fail {
                state.failures_left -= 1;
            }
            let floor = state.floors.get(conversation).copied().unwrap_or(Seq::ZERO);
            (floor, fail, state.held)
        };
        self.inner.started.add_permits(1);
        if held {
            // Closed never happens: the semaphore lives as long as `self`.
            let _ = self.inner.gate.acquire().await;
        }
        if fail {
            return Err(Error::new(ErrorKind::Unavailable, "scripted floor failure"));
        }
        Ok(floor)
    }
}
