//! The conformance suite on the embedded backend.

use messenger_store::Store;
use messenger_store::conformance;
use messenger_store::embedded::{EmbeddedConfig, EmbeddedStore};

fn open(dir: &tempfile::TempDir, group_commit: bool) -> Store<EmbeddedStore> {
    let mut config = EmbeddedConfig::new(dir.path().join("messages.db"));
    config.group_commit = group_commit;
    Store::new(EmbeddedStore::open_with(config).expect("open the store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_group_commit() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = open(&dir, true);
    conformance::run_all(&store).await;
    // Twice on the same file: the suite assumes nothing about what is stored.
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_group_commit() {
    let dir = tempfile::tempdir().expect("a temp dir");
    conformance::run_all(&open(&dir, false)).await;
}
