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
    // One node: the same store races itself.
    conformance::two_stores_race_for_the_same_seqs(&store, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_group_commit() {
    let dir = tempfile::tempdir().expect("a temp dir");
    conformance::run_all(&open(&dir, false)).await;
}

/// The dyn form forwards every operation: the suite passes on a store opened by URL, and the
/// sequencer floor comes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_store_opened_by_url() {
    use messenger_core::sequencer::SeqFloor;

    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("embedded:{}", dir.path().join("messages.db").display());
    let store: messenger_store::DynStore = messenger_store::connect(&url).await.expect("connect");
    conformance::run_all(&store).await;
    conformance::two_stores_race_for_the_same_seqs(&store, &store).await;
    let chat = messenger_core::ConversationId::new("g:never-written").expect("id");
    assert_eq!(
        store.floor(&chat).await.expect("floor"),
        messenger_core::Seq::ZERO
    );
}

mod embedded_only {
    use std::sync::Arc;

    use messenger_core::sequencer::SeqFloor;
    use messenger_core::store::{AppendMessage, GetHead};
    use messenger_core::{ConversationId, ErrorKind, Message, Seq, Timestamp, call};
    use messenger_store::Store;
    use messenger_store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn reopening_keeps_the_log_and_the_schema() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("messages.db");
        let chat = ConversationId::new("g:reopen").expect("id");
        {
            let store = Store::new(EmbeddedStore::open(&path).expect("open"));
            let void = Message::void(chat.clone(), Seq(3), Timestamp(1));
            call(
                &store,
                AppendMessage {
                    message: Arc::new(void),
                },
            )
            .await
            .expect("append");
            assert_eq!(store.floor(&chat).await.expect("floor"), Seq(3));
        }
        // Migrations run again at open and find nothing to do; the data is there.
        let store = Store::new(EmbeddedStore::open(&path).expect("reopen"));
        let head = call(
            &store,
            GetHead {
                conversation: chat.clone(),
            },
        )
        .await
        .expect("head");
        assert_eq!(head, Seq(3));
        assert_eq!(store.backend().path(), path);
    }

    #[tokio::test]
    async fn seq_zero_is_refused_with_the_backend_named() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::new(EmbeddedStore::open(dir.path().join("m.db")).expect("open"));
        let chat = ConversationId::new("g:zero").expect("id");
        let void = Message::void(chat, Seq::ZERO, Timestamp(1));
        let err = call(
            &store,
            AppendMessage {
                message: Arc::new(void),
            },
        )
        .await
        .expect_err("seq 0 means nothing");
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert_eq!(err.backend(), Some("embedded"));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).expect("write");
        let err = EmbeddedStore::open(&path).expect_err("not a database");
        assert_eq!(err.backend(), Some("embedded"));
    }

    /// Fresh appends and appends to taken seqs race into the committer's batches: the
    /// conflicting ones fail alone, every fresh one is stored, and the stats count every write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone_in_its_batch() {
        use messenger_core::store::ReadRange;
        use messenger_core::{Body, ClientMsgId, DeviceId, UserId};

        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::new(EmbeddedStore::open(dir.path().join("m.db")).expect("open"));
        let chat = ConversationId::new("g:mixed").expect("id");
        let message = |seq: u64, key: String| Message {
            conversation: chat.clone(),
            seq: Seq(seq),
            sender: UserId::new("alice").expect("id"),
            sender_device: DeviceId::new("d").expect("id"),
            client_msg_id: ClientMsgId::new(key).expect("id"),
            sent_at: Timestamp(1),
            body: Body::text(format!("text {seq}")),
        };
        // Odd seqs first, so each of the racing appends below to an odd seq is a conflict.
        for seq in (1..=199).step_by(2) {
            call(
                &store,
                AppendMessage {
                    message: Arc::new(message(seq, format!("first-{seq}"))),
                },
            )
            .await
            .expect("append");
        }
        let mut tasks = tokio::task::JoinSet::new();
        for seq in 1..=200 {
            let store = store.clone();
            let message = message(seq, format!("second-{seq}"));
            tasks.spawn(async move {
                let outcome = call(
                    &store,
                    AppendMessage {
                        message: Arc::new(message),
                    },
                )
                .await;
                (seq, outcome)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (seq, outcome) = joined.expect("the task runs");
            if seq % 2 == 1 {
                let err = outcome.expect_err("the seq is taken");
                assert_eq!(err.kind(), ErrorKind::Conflict, "seq {seq}: {err}");
            } else {
                let appended = outcome.expect("a free seq");
                assert!(!appended.duplicate);
            }
        }
        let page = call(
            &store,
            ReadRange {
                conversation: chat.clone(),
                after: Seq::ZERO,
                until: None,
                limit: 1000,
            },
        )
        .await
        .expect("read");
        assert_eq!(page.messages.len(), 200);
        for stored in &page.messages {
            let seq = stored.seq.get();
            let round = if seq % 2 == 1 { "first" } else { "second" };
            assert_eq!(stored.client_msg_id.as_str(), format!("{round}-{seq}"));
        }
        assert_eq!(page.head, Seq(200));
        let stats = store.backend().commit_stats();
        assert_eq!(stats.writes, 300);
        assert!(stats.transactions >= 1 && stats.transactions <= 300);
    }
}
