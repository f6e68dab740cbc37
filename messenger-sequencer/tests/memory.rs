//! The conformance suite on the memory backend.

use messenger_sequencer::memory::{MemorySequencer, MemorySequencerConfig, NoFloor};
use messenger_sequencer::{Sequencer, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_conformance_suite() {
    conformance::run(&Sequencer::new(MemorySequencer::new(NoFloor))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_with_one_shard_passes_the_conformance_suite() {
    let config = MemorySequencerConfig::default().with_shards(1);
    conformance::run(&Sequencer::new(MemorySequencer::with_config(
        NoFloor, config,
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_respects_its_floor() {
    conformance::run_with_floor(|floor| Sequencer::new(MemorySequencer::new(floor))).await;
}

#[tokio::test(flavor = "current_thread")]
async fn memory_respects_its_floor_on_one_thread() {
    conformance::run_with_floor(|floor| Sequencer::new(MemorySequencer::new(floor))).await;
}

/// The dyn form forwards both operations: the suite passes on `connect("memory:")`, and the
/// floor reaches the backend through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_by_url_passes_the_conformance_suite() {
    let sequencer = messenger_sequencer::connect("memory:", NoFloor)
        .await
        .expect("memory: is a sequencer URL");
    conformance::run(&sequencer).await;
    conformance::run_with_floor(|floor| Sequencer::new_dyn(MemorySequencer::new(floor))).await;
}
