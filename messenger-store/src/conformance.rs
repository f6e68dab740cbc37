//! The behaviour every store backend must show, as public async test functions (enabled by
//! the `conformance` feature).
//!
//! Each function takes any [`StoreService`] and panics on the first violated expectation.
//! They never assume an empty store: every run uses fresh conversation and user ids, so the
//! suite can run against a shared server, in parallel, and twice. A backend's test calls
//! [`run_all`]:
//!
//! ```
//! use messenger_store::Store;
//! use messenger_store::embedded::EmbeddedStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db"))?);
//! messenger_store::conformance::run_all(&store).await;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use messenger_core::store::{
    AmendMessage, Amended, AppendMessage, Appended, CreateConversation, FindMessage,
    GetConversation, GetHead, GetLastSeen, GetReceipts, MediaStatusSet, MessagePage, ReadBefore,
    ReadRange, SetLastSeen, SetMediaStatus, StoreService, UpdateReceipt, UserConversations,
    VoidHoles, VoidSeq,
};
use messenger_core::{
    Body, ClientMsgId, Conversation, ConversationId, ConversationKind, DeviceId, Error, ErrorKind,
    MediaBody, MediaStatus, MediaUpdate, Member, Message, ReceiptKind, Role, Seq, Timestamp,
    UserId, call,
};

/// Runs every behaviour test of this module on `store`.
pub async fn run_all<S: StoreService>(store: &S) {
    append_and_read_range(store).await;
    read_before_returns_the_latest(store).await;
    unknown_conversation_is_empty(store).await;
    conflicting_append_is_refused(store).await;
    retried_append_returns_the_original_and_voids_the_new_seq(store).await;
    void_seq_fills_a_hole_and_keeps_entries(store).await;
    void_holes_fills_every_hole_of_a_range(store).await;
    void_holes_races_writers(store).await;
    concurrent_appends_keep_every_message(store).await;
    membership_follows_the_log(store).await;
    ownership_transfer_demotes_the_previous_owner(store).await;
    receipts_are_monotonic(store).await;
    receipts_past_the_head_are_refused(store).await;
    receipts_list_every_member(store).await;
    last_seen_is_monotonic(store).await;
    user_conversations_report_unread(store).await;
    unread_counts_only_displayed_messages_of_others(store).await;
    mentions_count_texts_that_name_the_user(store).await;
    create_conversation_is_idempotent(store).await;
    media_moves_once_from_pending(store).await;
    media_status_is_conditional(store).await;
    amend_replaces_the_target_and_appends_the_update(store).await;
    amend_is_conditional_on_the_target(store).await;
    amend_retries_and_taken_seqs(store).await;
}

/// A suffix no other run of the suite uses: process id, clock and a counter.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn user(name: &str) -> UserId {
    UserId::new(format!("{name}-{}", unique_suffix())).expect("a valid user id")
}

fn group_id() -> ConversationId {
    ConversationId::new(format!("g:conformance-{}", unique_suffix())).expect("a valid group id")
}

fn device() -> DeviceId {
    DeviceId::new("conformance-device").expect("a valid device id")
}

fn key(value: &str) -> ClientMsgId {
    ClientMsgId::new(value).expect("a valid client_msg_id")
}

const CREATED_AT: Timestamp = Timestamp(1_700_000_000_000);

fn entry(
    conversation: &ConversationId,
    seq: u64,
    sender: &UserId,
    client_msg_id: &str,
    body: Body,
) -> Arc<Message> {
    Arc::new(Message {
        conversation: conversation.clone(),
        seq: Seq(seq),
        sender: sender.clone(),
        sender_device: device(),
        client_msg_id: key(client_msg_id),
        sent_at: Timestamp(CREATED_AT.0 + seq),
        body,
    })
}

fn text(
    conversation: &ConversationId,
    seq: u64,
    sender: &UserId,
    client_msg_id: &str,
) -> Arc<Message> {
    let body = Body::text(format!("message {client_msg_id} at {seq}"));
    entry(conversation, seq, sender, client_msg_id, body)
}

async fn try_append<S: StoreService>(store: &S, message: &Arc<Message>) -> Result<Appended, Error> {
    call(
        store,
        AppendMessage {
            message: Arc::clone(message),
        },
    )
    .await
}

async fn append<S: StoreService>(store: &S, message: &Arc<Message>) -> Appended {
    let appended = try_append(store, message)
        .await
        .unwrap_or_else(|err| panic!("append at seq {} failed: {err}", message.seq));
    assert!(!appended.duplicate, "a first append is not a duplicate");
    assert_eq!(
        &*appended.message, &**message,
        "append returns the stored entry"
    );
    appended
}

async fn append_texts<S: StoreService>(
    store: &S,
    conversation: &ConversationId,
    sender: &UserId,
    seqs: impl IntoIterator<Item = u64>,
) {
    for seq in seqs {
        append(store, &text(conversation, seq, sender, &format!("m{seq}"))).await;
    }
}

async fn read_range<S: StoreService>(
    store: &S,
    conversation: &ConversationId,
    after: u64,
    until: Option<u64>,
    limit: usize,
) -> MessagePage {
    call(
        store,
        ReadRange {
            conversation: conversation.clone(),
            after: Seq(after),
            until: until.map(Seq),
            limit,
        },
    )
    .await
    .expect("read_range")
}

async fn read_before<S: StoreService>(
    store: &S,
    conversation: &ConversationId,
    before: Option<u64>,
    limit: usize,
) -> MessagePage {
    call(
        store,
        ReadBefore {
            conversation: conversation.clone(),
            before: before.map(Seq),
            limit,
        },
    )
    .await
    .expect("read_before")
}

async fn head<S: StoreService>(store: &S, conversation: &ConversationId) -> Seq {
    call(
        store,
        GetHead {
            conversation: conversation.clone(),
        },
    )
    .await
    .expect("get_head")
}

fn seqs(page: &MessagePage) -> Vec<u64> {
    page.messages
        .iter()
        .map(|message| message.seq.get())
        .collect()
}

async fn entry_at<S: StoreService>(
    store: &S,
    conversation: &ConversationId,
    seq: u64,
) -> Option<Arc<Message>> {
    read_range(store, conversation, seq - 1, Some(seq), 1)
        .await
        .messages
        .into_iter()
        .next()
}

async fn create_group<S: StoreService>(
    store: &S,
    owner: &UserId,
    members: &[(&UserId, Role)],
) -> ConversationId {
    let id = group_id();
    let created = call(
        store,
        CreateConversation {
            conversation: Conversation {
                id: id.clone(),
                kind: ConversationKind::Group,
                title: Some("conformance".to_owned()),
                created_by: owner.clone(),
                created_at: CREATED_AT,
            },
            members: members
                .iter()
                .map(|(user, role)| Member {
                    user: (*user).clone(),
                    role: *role,
                })
                .collect(),
        },
    )
    .await
    .expect("create_conversation");
    assert!(created.created);
    id
}

async fn members<S: StoreService>(store: &S, conversation: &ConversationId) -> Vec<(UserId, Role)> {
    let info = call(
        store,
        GetConversation {
            conversation: conversation.clone(),
        },
    )
    .await
    .expect("get_conversation")
    .expect("the conversation exists");
    let mut members: Vec<_> = info
        .members
        .into_iter()
        .map(|member| (member.user, member.role))
        .collect();
    members.sort();
    members
}

fn sorted(mut members: Vec<(UserId, Role)>) -> Vec<(UserId, Role)> {
    members.sort();
    members
}

async fn receipt<S: StoreService>(
    store: &S,
    conversation: &ConversationId,
    user: &UserId,
    kind: ReceiptKind,
    seq: u64,
) -> Result<(u64, u64, bool), Error> {
    let updated = call(
        store,
        UpdateReceipt {
            conversation: conversation.clone(),
            user: user.clone(),
            kind,
            seq: Seq(seq),
        },
    )
    .await?;
    assert_eq!(&updated.receipts.user, user);
    Ok((
        updated.receipts.delivered.get(),
        updated.receipts.read.get(),
        updated.changed,
    ))
}

/// Appended entries come back intact and in order; `ReadRange` honours `after`, `until`
/// and `limit`; `GetHead` and `FindMessage` see them.
pub async fn append_and_read_range<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    let mut written = Vec::new();
    for seq in 1..=5 {
        let message = text(&chat, seq, &alice, &format!("m{seq}"));
        append(store, &message).await;
        written.push(message);
    }

    let page = read_range(store, &chat, 0, None, 100).await;
    assert_eq!(page.head, Seq(5));
    assert_eq!(
        page.messages, written,
        "every entry comes back intact, ascending"
    );
    assert_eq!(
        seqs(&read_range(store, &chat, 2, Some(4), 100).await),
        [3, 4]
    );
    assert_eq!(seqs(&read_range(store, &chat, 0, None, 2).await), [1, 2]);
    assert_eq!(
        seqs(&read_range(store, &chat, 5, None, 10).await),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&read_range(store, &chat, 1, Some(1), 10).await),
        Vec::<u64>::new()
    );
    assert_eq!(head(store, &chat).await, Seq(5));

    let found = call(
        store,
        FindMessage {
            conversation: chat.clone(),
            sender: alice.clone(),
            client_msg_id: key("m3"),
        },
    )
    .await
    .expect("find_message");
    assert_eq!(found.as_deref(), Some(&*written[2]));
    let missing = call(
        store,
        FindMessage {
            conversation: chat.clone(),
            sender: user("someone-else"),
            client_msg_id: key("m3"),
        },
    )
    .await
    .expect("find_message");
    assert!(missing.is_none(), "the key is per sender");

    // A range may have holes: seqs allocated but never stored.
    append(store, &text(&chat, 8, &alice, "m8")).await;
    let page = read_range(store, &chat, 4, None, 10).await;
    assert_eq!(seqs(&page), [5, 8]);
    assert_eq!(page.head, Seq(8));
}

/// `ReadBefore` returns the latest `limit` entries below `before`, ascending.
pub async fn read_before_returns_the_latest<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    append_texts(store, &chat, &alice, 1..=10).await;

    let page = read_before(store, &chat, None, 3).await;
    assert_eq!(seqs(&page), [8, 9, 10]);
    assert_eq!(page.head, Seq(10));
    assert_eq!(seqs(&read_before(store, &chat, Some(5), 2).await), [3, 4]);
    assert_eq!(seqs(&read_before(store, &chat, Some(2), 10).await), [1]);
    assert_eq!(
        seqs(&read_before(store, &chat, Some(1), 10).await),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&read_before(store, &chat, None, 0).await),
        Vec::<u64>::new()
    );
    assert_eq!(
        read_before(store, &chat, None, 100).await.messages.len(),
        10
    );
}

/// An unknown conversation has head 0, empty pages and no facts.
pub async fn unknown_conversation_is_empty<S: StoreService>(store: &S) {
    let chat = group_id();
    assert_eq!(head(store, &chat).await, Seq::ZERO);
    let page = read_range(store, &chat, 0, None, 10).await;
    assert!(page.messages.is_empty());
    assert_eq!(page.head, Seq::ZERO);
    assert!(
        read_before(store, &chat, None, 10)
            .await
            .messages
            .is_empty()
    );
    let info = call(
        store,
        GetConversation {
            conversation: chat.clone(),
        },
    )
    .await
    .expect("get_conversation");
    assert!(info.is_none());
    let receipts = call(store, GetReceipts { conversation: chat })
        .await
        .expect("get_receipts");
    assert!(receipts.is_empty());
}

/// A seq taken by another entry gives `Conflict` and writes nothing.
pub async fn conflicting_append_is_refused<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let chat = group_id();
    let first = text(&chat, 1, &alice, "a");
    append(store, &first).await;

    let other = text(&chat, 1, &bob, "b");
    let err = try_append(store, &other).await.expect_err("seq 1 is taken");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let same_sender = text(&chat, 1, &alice, "c");
    let err = try_append(store, &same_sender)
        .await
        .expect_err("seq 1 is taken");
    assert_eq!(err.kind(), ErrorKind::Conflict);

    assert_eq!(entry_at(store, &chat, 1).await.as_deref(), Some(&*first));
    assert_eq!(head(store, &chat).await, Seq(1));
    let found = call(
        store,
        FindMessage {
            conversation: chat.clone(),
            sender: bob.clone(),
            client_msg_id: key("b"),
        },
    )
    .await
    .expect("find_message");
    assert!(found.is_none(), "a refused append leaves no trace");

    // A membership change that conflicts changes no membership either.
    let removal = entry(&chat, 1, &bob, "leave", Body::MemberLeft);
    let group = create_group(
        store,
        &alice,
        &[(&alice, Role::Owner), (&bob, Role::Member)],
    )
    .await;
    append(store, &text(&group, 1, &alice, "hello")).await;
    let removal = Arc::new(Message {
        conversation: group.clone(),
        ..(*removal).clone()
    });
    let err = try_append(store, &removal)
        .await
        .expect_err("seq 1 is taken");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(members(store, &group).await.len(), 2);
}

/// A retry (same sender and `client_msg_id`) returns the original with `duplicate`, stores
/// nothing new, and leaves the retry's new seq void instead of a hole.
pub async fn retried_append_returns_the_original_and_voids_the_new_seq<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let chat = group_id();
    let original = text(&chat, 1, &alice, "hello");
    append(store, &original).await;

    // The same seq again.
    let again = try_append(store, &original)
        .await
        .expect("a retry succeeds");
    assert!(again.duplicate);
    assert_eq!(&*again.message, &*original);

    // A new seq for the same message: the original comes back, the new seq is void.
    let retry = Arc::new(Message {
        seq: Seq(2),
        sent_at: Timestamp(CREATED_AT.0 + 99),
        ..(*original).clone()
    });
    let retried = try_append(store, &retry).await.expect("a retry succeeds");
    assert!(retried.duplicate);
    assert_eq!(&*retried.message, &*original, "the original is returned");
    let page = read_range(store, &chat, 0, None, 10).await;
    assert_eq!(seqs(&page), [1, 2]);
    assert_eq!(&*page.messages[0], &*original);
    assert!(
        page.messages[1].is_void(),
        "the retry's seq is void, not a copy"
    );
    assert_eq!(page.head, Seq(2));

    // The retry's seq already holds another entry: that entry stays.
    let other = text(&chat, 3, &bob, "other");
    append(store, &other).await;
    let retry = Arc::new(Message {
        seq: Seq(3),
        ..(*original).clone()
    });
    let retried = try_append(store, &retry).await.expect("a retry succeeds");
    assert!(retried.duplicate);
    assert_eq!(retried.message.seq, Seq(1));
    assert_eq!(entry_at(store, &chat, 3).await.as_deref(), Some(&*other));
    assert_eq!(
        read_range(store, &chat, 0, None, 10).await.messages.len(),
        3
    );
}

/// `VoidSeq` stores a void in a free seq and returns what an occupied seq holds; a writer
/// arriving later at a voided seq gets `Conflict`.
pub async fn void_seq_fills_a_hole_and_keeps_entries<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    append(store, &text(&chat, 1, &alice, "m1")).await;
    let third = text(&chat, 3, &alice, "m3");
    append(store, &third).await;

    let void = call(
        store,
        VoidSeq {
            conversation: chat.clone(),
            seq: Seq(2),
        },
    )
    .await
    .expect("void_seq");
    assert!(void.is_void());
    assert_eq!(void.seq, Seq(2));
    assert_eq!(void.conversation, chat);
    let again = call(
        store,
        VoidSeq {
            conversation: chat.clone(),
            seq: Seq(2),
        },
    )
    .await
    .expect("void_seq");
    assert!(again.is_void());

    let kept = call(
        store,
        VoidSeq {
            conversation: chat.clone(),
            seq: Seq(3),
        },
    )
    .await
    .expect("void_seq");
    assert_eq!(&*kept, &*third, "an occupied seq keeps its entry");

    let late = text(&chat, 2, &alice, "late");
    let err = try_append(store, &late).await.expect_err("seq 2 is void");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        seqs(&read_range(store, &chat, 0, None, 10).await),
        [1, 2, 3]
    );

    // A void past the head moves the head: the seq is used.
    call(
        store,
        VoidSeq {
            conversation: chat.clone(),
            seq: Seq(5),
        },
    )
    .await
    .expect("void_seq");
    assert_eq!(head(store, &chat).await, Seq(5));
}

async fn void_holes<S: StoreService>(
    store: &S,
    conversation: &ConversationId,
    after: u64,
    until: u64,
) -> Result<MessagePage, Error> {
    call(
        store,
        VoidHoles {
            conversation: conversation.clone(),
            after: Seq(after),
            until: Seq(until),
        },
    )
    .await
}

/// `VoidHoles` voids every free seq of a range in one request and answers the whole range;
/// stored entries win, later writers get `Conflict`, nothing above the head is voided.
pub async fn void_holes_fills_every_hole_of_a_range<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    append_texts(store, &chat, &alice, [1, 3, 4, 7, 10]).await;

    let page = void_holes(store, &chat, 1, 8).await.expect("void_holes");
    assert_eq!(seqs(&page), [2, 3, 4, 5, 6, 7, 8], "every seq of the range");
    assert_eq!(page.head, Seq(10));
    for message in &page.messages {
        let stored = [3, 4, 7].contains(&message.seq.get());
        assert_eq!(
            message.is_void(),
            !stored,
            "seq {}: entries are kept, holes become voids",
            message.seq
        );
        assert_eq!(message.conversation, chat);
        if stored {
            assert_eq!(
                message.client_msg_id,
                key(&format!("m{}", message.seq)),
                "the stored entry itself"
            );
        }
    }
    // What was answered is what is stored.
    let log = read_range(store, &chat, 0, None, 20).await;
    assert_eq!(seqs(&log), [1, 2, 3, 4, 5, 6, 7, 8, 10]);
    assert_eq!(
        log.messages[1..8]
            .iter()
            .map(|message| (message.seq, message.is_void()))
            .collect::<Vec<_>>(),
        page.messages
            .iter()
            .map(|message| (message.seq, message.is_void()))
            .collect::<Vec<_>>()
    );

    // A writer arriving later at a voided seq is refused.
    let late = text(&chat, 5, &alice, "late");
    let err = try_append(store, &late).await.expect_err("seq 5 is void");
    assert_eq!(err.kind(), ErrorKind::Conflict);

    // Again: nothing changes.
    let again = void_holes(store, &chat, 1, 8).await.expect("void_holes");
    assert_eq!(seqs(&again), seqs(&page));

    // The range is lowered to the head: seq 11 is no hole, it has no entry after it.
    let top = void_holes(store, &chat, 8, 15).await.expect("void_holes");
    assert_eq!(seqs(&top), [9, 10]);
    assert!(top.messages[0].is_void());
    assert!(!top.messages[1].is_void());
    assert_eq!(top.head, Seq(10));
    assert_eq!(head(store, &chat).await, Seq(10), "the head did not move");

    // Empty ranges write nothing.
    let above = void_holes(store, &chat, 10, 15).await.expect("void_holes");
    assert!(above.messages.is_empty());
    assert_eq!(above.head, Seq(10));
    let backwards = void_holes(store, &chat, 6, 3).await.expect("void_holes");
    assert!(backwards.messages.is_empty());
    let unknown = void_holes(store, &group_id(), 0, 5)
        .await
        .expect("void_holes");
    assert!(unknown.messages.is_empty());
    assert_eq!(unknown.head, Seq::ZERO);
    assert_eq!(
        seqs(&read_range(store, &chat, 0, None, 20).await),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );

    // A range wider than the span allowed is refused before anything is written.
    let err = void_holes(store, &chat, 0, VoidHoles::MAX_SPAN + 1)
        .await
        .expect_err("too wide");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

/// Writers appending into a range while it is voided: every seq ends up holding exactly one
/// entry, and an append either succeeded (its entry is there) or got `Conflict` (a void is).
pub async fn void_holes_races_writers<S: StoreService>(store: &S) {
    const SPAN: u64 = 64;
    let alice = user("alice");
    let chat = group_id();
    append(store, &text(&chat, SPAN + 1, &alice, "top")).await;
    let mut writers = tokio::task::JoinSet::new();
    for seq in (1..=SPAN).step_by(2) {
        let store = store.clone();
        let chat = chat.clone();
        let alice = alice.clone();
        writers.spawn(async move {
            let message = text(&chat, seq, &alice, &format!("w{seq}"));
            (seq, try_append(&store, &message).await)
        });
    }
    let voided = void_holes(store, &chat, 0, SPAN).await.expect("void_holes");
    assert_eq!(seqs(&voided), (1..=SPAN).collect::<Vec<_>>());
    let mut outcomes = Vec::new();
    while let Some(joined) = writers.join_next().await {
        outcomes.push(joined.expect("writer task"));
    }
    let log = read_range(store, &chat, 0, None, 200).await;
    assert_eq!(seqs(&log), (1..=SPAN + 1).collect::<Vec<_>>());
    for (seq, outcome) in outcomes {
        let stored = &log.messages[usize::try_from(seq - 1).expect("small")];
        match outcome {
            Ok(appended) => {
                assert!(!appended.duplicate);
                assert_eq!(&**stored, &*appended.message, "seq {seq} keeps its append");
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Conflict, "seq {seq}: {err}");
                assert!(stored.is_void(), "seq {seq} was refused, so it is void");
            }
        }
    }
    // What `VoidHoles` answered matches the log wherever it answered an entry.
    for message in &voided.messages {
        let stored = &log.messages[usize::try_from(message.seq.get() - 1).expect("small")];
        assert_eq!(stored.is_void(), message.is_void(), "seq {}", message.seq);
    }
}

/// Many writers at once: every acknowledged entry is stored once; of several writers racing
/// for one seq, exactly one wins and the others get `Conflict`.
pub async fn concurrent_appends_keep_every_message<S: StoreService>(store: &S) {
    const WRITERS: u64 = 16;
    const EACH: u64 = 8;
    let chat = group_id();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let chat = chat.clone();
        tasks.spawn(async move {
            let sender = user(&format!("writer{writer}"));
            for i in 0..EACH {
                let seq = writer * EACH + i + 1;
                let appended = try_append(
                    &store,
                    &text(&chat, seq, &sender, &format!("w{writer}-{i}")),
                )
                .await
                .expect("a free seq is appended");
                assert!(!appended.duplicate);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a writer task");
    }
    let page = read_range(store, &chat, 0, None, 1000).await;
    assert_eq!(seqs(&page), (1..=WRITERS * EACH).collect::<Vec<_>>());
    assert_eq!(page.head, Seq(WRITERS * EACH));

    let race = Seq(WRITERS * EACH + 1);
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let chat = chat.clone();
        tasks.spawn(async move {
            let sender = user(&format!("racer{writer}"));
            try_append(&store, &text(&chat, race.get(), &sender, "race")).await
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("a racer task") {
            Ok(appended) => winners.push(appended.message),
            Err(err) => assert_eq!(err.kind(), ErrorKind::Conflict),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins a seq");
    assert_eq!(entry_at(store, &chat, race.get()).await, winners.pop());
}

/// Membership changes in the log update the member list in the same write.
pub async fn membership_follows_the_log<S: StoreService>(store: &S) {
    let owner = user("owner");
    let ann = user("ann");
    let ben = user("ben");
    let cid = user("cid");
    let dee = user("dee");
    let chat = create_group(store, &owner, &[(&owner, Role::Owner)]).await;
    assert_eq!(members(store, &chat).await, [(owner.clone(), Role::Owner)]);

    let created = Body::GroupCreated {
        title: "conformance".to_owned(),
        members: vec![
            Member {
                user: owner.clone(),
                role: Role::Owner,
            },
            Member {
                user: ann.clone(),
                role: Role::Member,
            },
        ],
    };
    append(store, &entry(&chat, 1, &owner, "create", created)).await;
    assert_eq!(
        members(store, &chat).await,
        sorted(vec![
            (owner.clone(), Role::Owner),
            (ann.clone(), Role::Member)
        ])
    );

    let added = Body::MembersAdded {
        users: vec![ann.clone(), ben.clone(), cid.clone(), dee.clone()],
        role: Role::Admin,
    };
    append(store, &entry(&chat, 2, &owner, "add", added)).await;
    assert_eq!(
        members(store, &chat).await,
        sorted(vec![
            (owner.clone(), Role::Owner),
            (ann.clone(), Role::Member),
            (ben.clone(), Role::Admin),
            (cid.clone(), Role::Admin),
            (dee.clone(), Role::Admin),
        ]),
        "added users get the role; existing members keep theirs"
    );

    append(
        store,
        &entry(
            &chat,
            3,
            &owner,
            "remove",
            Body::MemberRemoved { user: cid.clone() },
        ),
    )
    .await;
    append(store, &entry(&chat, 4, &ben, "leave", Body::MemberLeft)).await;
    append(
        store,
        &entry(
            &chat,
            5,
            &owner,
            "promote",
            Body::RoleChanged {
                user: ann.clone(),
                role: Role::Admin,
            },
        ),
    )
    .await;
    append(
        store,
        &entry(
            &chat,
            6,
            &owner,
            "demote",
            Body::RoleChanged {
                user: dee.clone(),
                role: Role::Member,
            },
        ),
    )
    .await;
    assert_eq!(
        members(store, &chat).await,
        sorted(vec![
            (owner.clone(), Role::Owner),
            (ann.clone(), Role::Admin),
            (dee.clone(), Role::Member)
        ])
    );

    // A duplicate of a membership change changes nothing more.
    let re_add = entry(
        &chat,
        7,
        &owner,
        "add",
        Body::MembersAdded {
            users: vec![cid.clone()],
            role: Role::Member,
        },
    );
    let appended = try_append(store, &re_add).await.expect("a retry succeeds");
    assert!(appended.duplicate);
    assert!(
        !members(store, &chat)
            .await
            .iter()
            .any(|(user, _)| user == &cid)
    );

    let info = call(
        store,
        GetConversation {
            conversation: chat.clone(),
        },
    )
    .await
    .expect("get_conversation")
    .expect("the conversation exists");
    assert_eq!(info.head, Seq(7));
    assert_eq!(info.role_of(&owner), Some(Role::Owner));
    assert_eq!(info.role_of(&cid), None);
}

/// Giving `owner` to a member makes the previous owner an admin: one owner per group.
pub async fn ownership_transfer_demotes_the_previous_owner<S: StoreService>(store: &S) {
    let owner = user("owner");
    let heir = user("heir");
    let other = user("other");
    let chat = create_group(
        store,
        &owner,
        &[
            (&owner, Role::Owner),
            (&heir, Role::Member),
            (&other, Role::Member),
        ],
    )
    .await;
    let transfer = Body::RoleChanged {
        user: heir.clone(),
        role: Role::Owner,
    };
    append(store, &entry(&chat, 1, &owner, "transfer", transfer)).await;
    assert_eq!(
        members(store, &chat).await,
        sorted(vec![
            (owner.clone(), Role::Admin),
            (heir.clone(), Role::Owner),
            (other.clone(), Role::Member)
        ])
    );
}

/// Watermarks only grow; `Read` raises `delivered` too; `changed` tells whether one moved.
pub async fn receipts_are_monotonic<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let chat = create_group(
        store,
        &alice,
        &[(&alice, Role::Owner), (&bob, Role::Member)],
    )
    .await;
    append_texts(store, &chat, &alice, 1..=5).await;

    // (kind, seq) reported → (delivered, read, changed) expected.
    let steps = [
        (ReceiptKind::Delivered, 3, (3, 0, true)),
        (ReceiptKind::Delivered, 2, (3, 0, false)),
        (ReceiptKind::Read, 2, (3, 2, true)),
        (ReceiptKind::Read, 4, (4, 4, true)),
        (ReceiptKind::Read, 1, (4, 4, false)),
        (ReceiptKind::Delivered, 4, (4, 4, false)),
        (ReceiptKind::Delivered, 5, (5, 4, true)),
    ];
    for (kind, seq, expected) in steps {
        let got = receipt(store, &chat, &bob, kind, seq)
            .await
            .expect("receipt");
        assert_eq!(got, expected, "{kind:?} at {seq}");
    }
}

/// A receipt past the conversation's head is `InvalidRequest` and changes nothing.
pub async fn receipts_past_the_head_are_refused<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let chat = create_group(
        store,
        &alice,
        &[(&alice, Role::Owner), (&bob, Role::Member)],
    )
    .await;
    append_texts(store, &chat, &alice, 1..=2).await;
    for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
        let err = receipt(store, &chat, &bob, kind, 3)
            .await
            .expect_err("seq 3 is past the head");
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    }
    assert_eq!(
        receipt(store, &chat, &bob, ReceiptKind::Read, 2)
            .await
            .expect("receipt"),
        (2, 2, true)
    );
}

/// `GetReceipts` lists every current member, with zeros for those who sent none.
pub async fn receipts_list_every_member<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let carol = user("carol");
    let chat = create_group(
        store,
        &alice,
        &[
            (&alice, Role::Owner),
            (&bob, Role::Member),
            (&carol, Role::Member),
        ],
    )
    .await;
    append_texts(store, &chat, &alice, 1..=3).await;
    receipt(store, &chat, &bob, ReceiptKind::Read, 2)
        .await
        .expect("receipt");
    receipt(store, &chat, &carol, ReceiptKind::Delivered, 3)
        .await
        .expect("receipt");
    append(store, &entry(&chat, 4, &carol, "leave", Body::MemberLeft)).await;

    let mut receipts: Vec<_> = call(
        store,
        GetReceipts {
            conversation: chat.clone(),
        },
    )
    .await
    .expect("get_receipts")
    .into_iter()
    .map(|receipts| (receipts.user, receipts.delivered.get(), receipts.read.get()))
    .collect();
    receipts.sort();
    let mut expected = vec![(alice.clone(), 0, 0), (bob.clone(), 2, 2)];
    expected.sort();
    assert_eq!(receipts, expected, "one entry per current member");
}

/// Last seen only grows; reads come back in the order asked, `None` for unknown users.
pub async fn last_seen_is_monotonic<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let never = user("never");
    let set = |user: &UserId, at: u64| {
        call(
            store,
            SetLastSeen {
                user: user.clone(),
                at: Timestamp(at),
            },
        )
    };
    assert_eq!(
        set(&alice, 1_000).await.expect("set_last_seen"),
        Timestamp(1_000)
    );
    assert_eq!(
        set(&alice, 500).await.expect("set_last_seen"),
        Timestamp(1_000)
    );
    assert_eq!(
        set(&alice, 2_000).await.expect("set_last_seen"),
        Timestamp(2_000)
    );
    assert_eq!(set(&bob, 7).await.expect("set_last_seen"), Timestamp(7));

    let seen = call(
        store,
        GetLastSeen {
            users: vec![never.clone(), alice.clone(), bob.clone()],
        },
    )
    .await
    .expect("get_last_seen");
    assert_eq!(
        seen,
        [
            (never, None),
            (alice, Some(Timestamp(2_000))),
            (bob, Some(Timestamp(7)))
        ]
    );
}

/// A user's conversations come with role, head, watermarks and `unread` (here every entry
/// after the watermark is a text message of another user, so it is `head - read`).
pub async fn user_conversations_report_unread<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let busy = create_group(
        store,
        &alice,
        &[(&alice, Role::Owner), (&bob, Role::Member)],
    )
    .await;
    let quiet = create_group(store, &bob, &[(&bob, Role::Owner), (&alice, Role::Admin)]).await;
    let elsewhere = create_group(store, &bob, &[(&bob, Role::Owner)]).await;
    append_texts(store, &busy, &bob, 1..=5).await;
    append_texts(store, &elsewhere, &bob, 1..=2).await;
    receipt(store, &busy, &alice, ReceiptKind::Read, 2)
        .await
        .expect("receipt");
    receipt(store, &busy, &alice, ReceiptKind::Delivered, 4)
        .await
        .expect("receipt");

    let mut summaries = call(
        store,
        UserConversations {
            user: alice.clone(),
        },
    )
    .await
    .expect("user_conversations");
    summaries.sort_by(|a, b| a.conversation.id.cmp(&b.conversation.id));
    let mut expected = vec![
        (busy.clone(), Role::Owner, 5, 4, 2, 3),
        (quiet.clone(), Role::Admin, 0, 0, 0, 0),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<_> = summaries
        .iter()
        .map(|summary| {
            (
                summary.conversation.id.clone(),
                summary.role,
                summary.head.get(),
                summary.delivered.get(),
                summary.read.get(),
                summary.unread,
            )
        })
        .collect();
    assert_eq!(got, expected);
    let busy_summary = summaries
        .iter()
        .find(|summary| summary.conversation.id == busy)
        .expect("listed");
    assert_eq!(
        busy_summary.conversation.title.as_deref(),
        Some("conformance")
    );
    assert_eq!(busy_summary.conversation.created_by, alice);

    // Leaving removes the conversation from the list.
    append(store, &entry(&quiet, 1, &alice, "leave", Body::MemberLeft)).await;
    let summaries = call(
        store,
        UserConversations {
            user: alice.clone(),
        },
    )
    .await
    .expect("user_conversations");
    assert_eq!(
        summaries
            .iter()
            .map(|summary| &summary.conversation.id)
            .collect::<Vec<_>>(),
        [&busy]
    );
    assert!(
        call(
            store,
            UserConversations {
                user: user("nobody")
            }
        )
        .await
        .expect("user_conversations")
        .is_empty()
    );
}

/// Creating an existing conversation returns it unchanged with `created: false`.
pub async fn create_conversation_is_idempotent<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let id = ConversationId::direct(&alice, &bob).expect("a direct id");
    let facts = Conversation {
        id: id.clone(),
        kind: ConversationKind::Direct,
        title: None,
        created_by: alice.clone(),
        created_at: CREATED_AT,
    };
    let request = CreateConversation {
        conversation: facts.clone(),
        members: vec![
            Member {
                user: alice.clone(),
                role: Role::Member,
            },
            Member {
                user: bob.clone(),
                role: Role::Member,
            },
        ],
    };
    let created = call(store, request.clone())
        .await
        .expect("create_conversation");
    assert!(created.created);
    assert_eq!(created.conversation, facts);

    let mut second = request;
    second.conversation.created_by = bob.clone();
    second.conversation.created_at = Timestamp(CREATED_AT.0 + 5);
    let again = call(store, second).await.expect("create_conversation");
    assert!(!again.created);
    assert_eq!(again.conversation, facts, "the stored facts win");

    let info = call(store, GetConversation { conversation: id })
        .await
        .expect("get_conversation")
        .expect("exists");
    assert_eq!(info.conversation, facts);
    assert_eq!(info.head, Seq::ZERO);
    assert_eq!(info.members.len(), 2);
}

/// Two stores (two nodes on one database; the same store twice for a single-node backend)
/// race writers for the same seqs: each seq goes to exactly one message and every loser hears
/// `Conflict`; then one message retried at several new seqs at once is stored once and the
/// other seqs become void, leaving no hole.
///
/// # Panics
/// When the stores break the contract.
pub async fn two_stores_race_for_the_same_seqs<S: StoreService>(first: &S, second: &S) {
    const SEQS: u64 = 20;
    const WRITERS: usize = 6;
    const RETRIES: u64 = 6;
    let stores = [first.clone(), second.clone()];
    let conversation = group_id();

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = stores[writer % 2].clone();
        let conversation = conversation.clone();
        tasks.push(tokio::spawn(async move {
            let sender = user(&format!("writer{writer}"));
            let mut won = Vec::new();
            for seq in 1..=SEQS {
                let message = text(&conversation, seq, &sender, &format!("w{writer}-s{seq}"));
                match try_append(&store, &message).await {
                    Ok(appended) => {
                        assert!(!appended.duplicate, "a first append is not a duplicate");
                        won.push(seq);
                    }
                    Err(err) => assert_eq!(err.kind(), ErrorKind::Conflict, "{err}"),
                }
            }
            won
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(
            task.await
                .unwrap_or_else(|err| panic!("a writer task: {err}")),
        );
    }
    winners.sort_unstable();
    assert_eq!(
        winners,
        (1..=SEQS).collect::<Vec<_>>(),
        "one winner per seq"
    );

    let sender = user("retrier");
    let mut retries = Vec::new();
    for seq in SEQS + 1..=SEQS + RETRIES {
        let store = stores[(seq % 2) as usize].clone();
        let message = text(&conversation, seq, &sender, "the-retried-one");
        retries.push(tokio::spawn(
            async move { try_append(&store, &message).await },
        ));
    }
    let mut originals = Vec::new();
    for retry in retries {
        let appended = retry
            .await
            .unwrap_or_else(|err| panic!("a retry task: {err}"))
            .unwrap_or_else(|err| panic!("a retry is never refused: {err}"));
        originals.push(appended.message.seq);
    }
    originals.dedup();
    assert_eq!(
        originals.len(),
        1,
        "every retry answers with one original: {originals:?}"
    );

    let page = read_range(first, &conversation, 0, None, 1000).await;
    assert_eq!(page.head, Seq(SEQS + RETRIES));
    assert_eq!(page.messages.len() as u64, SEQS + RETRIES, "no hole");
    let stored = page
        .messages
        .iter()
        .filter(|message| message.client_msg_id.as_str() == "the-retried-one")
        .count();
    assert_eq!(stored, 1, "the retried message is stored once");
    let voids = page
        .messages
        .iter()
        .filter(|message| message.is_void())
        .count();
    assert_eq!(
        voids as u64,
        RETRIES - 1,
        "the other retries' seqs are void"
    );
}

fn media(conversation: &ConversationId, seq: u64, sender: &UserId) -> Arc<Message> {
    let body = Body::Media(Box::new(MediaBody {
        name: "cat.png".to_owned(),
        mime: "image/png".to_owned(),
        size: 1234,
        sha256: None,
        width: Some(640),
        height: Some(480),
        duration_ms: None,
        status: MediaStatus::Pending,
        url: None,
        reason: None,
        reply_to: None,
        reactions: Vec::new(),
    }));
    entry(conversation, seq, sender, &format!("media-{seq}"), body)
}

fn media_update(
    conversation: &ConversationId,
    seq: u64,
    media_seq: u64,
    status: MediaStatus,
    url: Option<&str>,
) -> Arc<Message> {
    let sender = UserId::new("system").expect("a valid user id");
    let body = Body::MediaStatus(Box::new(MediaUpdate {
        media_seq: Seq(media_seq),
        status,
        url: url.map(str::to_owned),
        reason: (status == MediaStatus::Failed).then(|| "upload expired".to_owned()),
    }));
    entry(
        conversation,
        seq,
        &sender,
        &format!("media-status:{media_seq}"),
        body,
    )
}

async fn set_media_status<S: StoreService>(
    store: &S,
    update: &Arc<Message>,
) -> Result<MediaStatusSet, Error> {
    call(
        store,
        SetMediaStatus {
            update: Arc::clone(update),
        },
    )
    .await
}

fn media_status_of(message: &Message) -> (MediaStatus, Option<String>) {
    match &message.body {
        Body::Media(body) => (body.status, body.url.clone()),
        other => panic!("seq {} is not media: {other:?}", message.seq),
    }
}

/// A pending media entry moves to `ready` once: the status entry is appended at its seq and
/// the media entry reads `ready` with its url; a second completion and a failure after it
/// are refused and write nothing.
pub async fn media_moves_once_from_pending<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    append(store, &media(&chat, 1, &alice)).await;
    append(store, &text(&chat, 2, &alice, "after")).await;

    let ready = media_update(&chat, 3, 1, MediaStatus::Ready, Some("https://cdn/x/1"));
    let set = set_media_status(store, &ready)
        .await
        .expect("pending media moves to ready");
    assert!(set.applied, "the first completion applies");
    assert_eq!(
        media_status_of(&set.media),
        (MediaStatus::Ready, Some("https://cdn/x/1".to_owned()))
    );
    let stored = entry_at(store, &chat, 1).await.expect("the media entry");
    assert_eq!(
        media_status_of(&stored),
        (MediaStatus::Ready, Some("https://cdn/x/1".to_owned())),
        "the entry changed in place"
    );
    assert_eq!(stored.seq, Seq(1), "the media entry keeps its place");
    assert_eq!(entry_at(store, &chat, 3).await.as_deref(), Some(&*ready));
    assert_eq!(head(store, &chat).await, Seq(3));

    // The same completion again (a retried upload): refused, nothing new.
    let again = media_update(&chat, 4, 1, MediaStatus::Ready, Some("https://cdn/x/1"));
    let set = set_media_status(store, &again)
        .await
        .expect("a second completion answers");
    assert!(!set.applied, "a second completion is refused");
    assert!(
        entry_at(store, &chat, 4).await.is_none(),
        "nothing appended"
    );

    // A failure after ready: refused, the entry stays ready.
    let failed = media_update(&chat, 4, 1, MediaStatus::Failed, None);
    let set = set_media_status(store, &failed)
        .await
        .expect("a late failure answers");
    assert!(!set.applied);
    assert_eq!(media_status_of(&set.media).0, MediaStatus::Ready);
    assert!(
        entry_at(store, &chat, 4).await.is_none(),
        "nothing appended"
    );
    assert_eq!(head(store, &chat).await, Seq(3));
}

/// A failed entry never becomes ready; a taken update seq is a `Conflict` that moves
/// nothing; non-media and missing entries are refused.
pub async fn media_status_is_conditional<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    append(store, &media(&chat, 1, &alice)).await;
    append(store, &text(&chat, 2, &alice, "taken")).await;

    // The update's seq is taken: Conflict, and the media entry is still pending.
    let clash = media_update(&chat, 2, 1, MediaStatus::Failed, None);
    let err = set_media_status(store, &clash)
        .await
        .expect_err("seq 2 is taken");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let stored = entry_at(store, &chat, 1).await.expect("the media entry");
    assert_eq!(media_status_of(&stored).0, MediaStatus::Pending);

    let failed = media_update(&chat, 3, 1, MediaStatus::Failed, None);
    let set = set_media_status(store, &failed).await.expect("expiry");
    assert!(set.applied);
    assert_eq!(media_status_of(&set.media).0, MediaStatus::Failed);
    let stored = entry_at(store, &chat, 1).await.expect("the media entry");
    assert_eq!(media_status_of(&stored).0, MediaStatus::Failed);

    // A late completion after failed: refused, nothing written.
    let late = media_update(&chat, 4, 1, MediaStatus::Ready, Some("https://cdn/x/late"));
    let set = set_media_status(store, &late)
        .await
        .expect("a late completion answers");
    assert!(!set.applied, "ready after failed is refused");
    assert_eq!(media_status_of(&set.media).0, MediaStatus::Failed);
    assert!(entry_at(store, &chat, 4).await.is_none());

    // Not a media entry, and no entry at all.
    let on_text = media_update(&chat, 4, 2, MediaStatus::Ready, Some("https://cdn/x/2"));
    let err = set_media_status(store, &on_text)
        .await
        .expect_err("seq 2 is text");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    let on_nothing = media_update(&chat, 4, 99, MediaStatus::Ready, Some("https://cdn/x/99"));
    let err = set_media_status(store, &on_nothing)
        .await
        .expect_err("seq 99 is empty");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(entry_at(store, &chat, 4).await.is_none());
}

async fn amend<S: StoreService>(
    store: &S,
    update: &Arc<Message>,
    expected: &Arc<Message>,
    amended: &Arc<Message>,
) -> Result<Amended, Error> {
    call(
        store,
        AmendMessage {
            update: Arc::clone(update),
            expected: Arc::clone(expected),
            amended: Arc::clone(amended),
        },
    )
    .await
}

/// `target` with its text replaced as an edit does it.
fn edited(target: &Message, text: &str, at: u64, edits: u32) -> Arc<Message> {
    Arc::new(Message {
        body: Body::Text {
            text: text.to_owned(),
            reply_to: None,
            edited_at: Some(Timestamp(at)),
            edits,
            reactions: Vec::new(),
            mention_all: false,
            mentions: Vec::new(),
        },
        ..target.clone()
    })
}

fn edit_entry(
    conversation: &ConversationId,
    seq: u64,
    sender: &UserId,
    client_msg_id: &str,
    target: u64,
    text: &str,
) -> Arc<Message> {
    let body = Body::Edit {
        target: Seq(target),
        text: text.to_owned(),
    };
    entry(conversation, seq, sender, client_msg_id, body)
}

/// An edit and a delete: the update entry is appended at its seq and the target reads as
/// amended, in history read later (by range and from the head).
pub async fn amend_replaces_the_target_and_appends_the_update<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    let original = text(&chat, 1, &alice, "first");
    append(store, &original).await;
    append(store, &text(&chat, 2, &alice, "second")).await;

    let edit = edit_entry(&chat, 3, &alice, "edit-1", 1, "first, edited");
    let new = edited(&original, "first, edited", 42, 1);
    match amend(store, &edit, &original, &new).await.expect("edit") {
        Amended::Applied { update, target } => {
            assert_eq!(update, edit, "the update entry as stored");
            assert_eq!(target, new, "the target as stored");
        }
        other => panic!("a first edit applies: {other:?}"),
    }
    let page = read_range(store, &chat, 0, None, 10).await;
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    assert_eq!(page.head, Seq(3), "the update raised the head");
    assert_eq!(page.messages[0], new, "history shows the latest version");
    assert_eq!(page.messages[2], edit, "the edit is an entry of the log");

    let delete = entry(
        &chat,
        4,
        &alice,
        "delete-2",
        Body::Delete { target: Seq(2) },
    );
    let second = entry_at(store, &chat, 2).await.expect("seq 2");
    let tombstone = Arc::new(Message {
        body: Body::Deleted {
            by: alice.clone(),
            at: Timestamp(43),
        },
        ..(*second).clone()
    });
    let answer = amend(store, &delete, &second, &tombstone).await;
    assert!(
        matches!(answer, Ok(Amended::Applied { .. })),
        "a delete applies: {answer:?}"
    );
    let page = read_before(store, &chat, None, 10).await;
    assert_eq!(seqs(&page), vec![1, 2, 3, 4]);
    assert_eq!(
        page.messages[1], tombstone,
        "the deleted entry holds its tombstone"
    );
}

/// The target decides: an amendment computed from a version that is no longer stored writes
/// nothing and answers what is stored; one whose result is stored already (an interrupted
/// attempt) appends its update; a target seq holding nothing is `Changed` with nothing.
pub async fn amend_is_conditional_on_the_target<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    let original = text(&chat, 1, &alice, "first");
    append(store, &original).await;
    let once = edited(&original, "once", 10, 1);
    let first = edit_entry(&chat, 2, &alice, "edit-a", 1, "once");
    amend(store, &first, &original, &once)
        .await
        .expect("first edit");

    // A second edit decided on the original loses to the first.
    let stale = edit_entry(&chat, 3, &alice, "edit-b", 1, "stale");
    let answer = amend(store, &stale, &original, &edited(&original, "stale", 11, 1))
        .await
        .expect("a stale edit is answered");
    match answer {
        Amended::Changed { current } => {
            assert_eq!(
                current,
                Some(Arc::clone(&once)),
                "answers the stored version"
            );
        }
        other => panic!("a stale edit is refused: {other:?}"),
    }
    assert_eq!(
        head(store, &chat).await,
        Seq(2),
        "the stale edit wrote nothing"
    );

    // The result is stored already: the update alone is appended.
    let repair = edit_entry(&chat, 3, &alice, "edit-c", 1, "once");
    let answer = amend(store, &repair, &original, &once)
        .await
        .expect("a repair");
    assert!(matches!(answer, Amended::Applied { .. }), "{answer:?}");
    assert_eq!(entry_at(store, &chat, 3).await, Some(repair));
    assert_eq!(
        entry_at(store, &chat, 1).await,
        Some(once),
        "the target is unchanged"
    );

    // Nothing at the target seq.
    let missing = text(&chat, 9, &alice, "never-stored");
    let update = edit_entry(&chat, 4, &alice, "edit-d", 9, "x");
    let answer = amend(store, &update, &missing, &edited(&missing, "x", 12, 1))
        .await
        .expect("an absent target is answered");
    assert!(
        matches!(answer, Amended::Changed { current: None }),
        "{answer:?}"
    );
    assert_eq!(head(store, &chat).await, Seq(3), "nothing written");
}

/// A retried amendment (same key, new seq) answers the original and voids the new seq; an
/// update at a taken seq is `Conflict` and changes nothing; entries that do not agree are
/// `InvalidRequest`.
pub async fn amend_retries_and_taken_seqs<S: StoreService>(store: &S) {
    let alice = user("alice");
    let chat = group_id();
    let original = text(&chat, 1, &alice, "first");
    append(store, &original).await;
    let new = edited(&original, "edited", 10, 1);
    let edit = edit_entry(&chat, 2, &alice, "edit-1", 1, "edited");
    amend(store, &edit, &original, &new).await.expect("edit");

    let retry = edit_entry(&chat, 3, &alice, "edit-1", 1, "edited");
    match amend(store, &retry, &original, &new).await.expect("retry") {
        Amended::Duplicate { original } => assert_eq!(original, edit, "the first attempt"),
        other => panic!("a retry is a duplicate: {other:?}"),
    }
    assert!(
        entry_at(store, &chat, 3)
            .await
            .is_some_and(|entry| entry.is_void()),
        "the retry's seq is void"
    );

    let clash = edit_entry(&chat, 3, &alice, "edit-2", 1, "again");
    let err = amend(store, &clash, &new, &edited(&new, "again", 11, 2))
        .await
        .expect_err("a taken seq");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    // Retried at a fresh seq as the engine does (a backend without multi-row transactions
    // may have moved the target already: the retry repairs it).
    let twice = edited(&new, "again", 11, 2);
    let clash = edit_entry(&chat, 4, &alice, "edit-2", 1, "again");
    let answer = amend(store, &clash, &new, &twice).await.expect("retry");
    assert!(matches!(answer, Amended::Applied { .. }), "{answer:?}");
    assert_eq!(entry_at(store, &chat, 1).await, Some(Arc::clone(&twice)));
    assert_eq!(entry_at(store, &chat, 4).await, Some(clash));

    let elsewhere = edit_entry(&chat, 5, &alice, "edit-3", 2, "wrong target");
    let err = amend(store, &elsewhere, &twice, &edited(&twice, "x", 12, 3))
        .await
        .expect_err("an update naming another seq");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert_eq!(head(store, &chat).await, Seq(4), "nothing written");
}

/// `(unread, mentions)` of `user` in `conversation`.
async fn counts_of<S: StoreService>(
    store: &S,
    user: &UserId,
    conversation: &ConversationId,
) -> (u64, u64) {
    call(store, UserConversations { user: user.clone() })
        .await
        .expect("user_conversations")
        .into_iter()
        .find(|summary| &summary.conversation.id == conversation)
        .map(|summary| (summary.unread, summary.mentions))
        .expect("a member's conversation is listed")
}

/// `unread` counts the text and media messages (not failed, not deleted) of other users
/// after the read watermark — not the user's own messages, voids, membership changes,
/// status, edit or delete entries — and reading up to the head clears it even when the head
/// is a void.
pub async fn unread_counts_only_displayed_messages_of_others<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let chat = create_group(
        store,
        &alice,
        &[(&alice, Role::Owner), (&bob, Role::Member)],
    )
    .await;
    let failed = |seq| {
        let mut entry = (*media(&chat, seq, &bob)).clone();
        if let Body::Media(body) = &mut entry.body {
            body.status = MediaStatus::Failed;
        }
        Arc::new(entry)
    };
    let entries = [
        text(&chat, 1, &bob, "counted"),
        text(&chat, 2, &alice, "own"),
        media(&chat, 3, &bob),
        failed(4),
        entry(
            &chat,
            5,
            &bob,
            "gone",
            Body::Deleted {
                by: bob.clone(),
                at: Timestamp(1),
            },
        ),
        edit_entry(&chat, 6, &bob, "edit", 1, "counted, edited"),
        entry(&chat, 7, &bob, "delete", Body::Delete { target: Seq(5) }),
        entry(
            &chat,
            8,
            &alice,
            "added",
            Body::MembersAdded {
                users: vec![user("carol")],
                role: Role::Member,
            },
        ),
        media_update(&chat, 9, 3, MediaStatus::Ready, Some("https://cdn/x/3")),
    ];
    for message in &entries {
        append(store, message).await;
    }
    call(
        store,
        VoidSeq {
            conversation: chat.clone(),
            seq: Seq(10),
        },
    )
    .await
    .expect("void");
    assert_eq!(
        counts_of(store, &alice, &chat).await.0,
        2,
        "bob's text and pending media"
    );
    assert_eq!(
        counts_of(store, &bob, &chat).await.0,
        1,
        "alice's own text, for bob"
    );
    receipt(store, &chat, &alice, ReceiptKind::Read, 1)
        .await
        .expect("read");
    assert_eq!(counts_of(store, &alice, &chat).await.0, 1);
    receipt(store, &chat, &alice, ReceiptKind::Read, 10)
        .await
        .expect("read");
    assert_eq!(
        counts_of(store, &alice, &chat).await.0,
        0,
        "read to a void head clears it"
    );
}

fn mentioning(
    conversation: &ConversationId,
    seq: u64,
    sender: &UserId,
    mentions: &[&UserId],
    all: bool,
) -> Arc<Message> {
    let mut body = Body::text(format!("mentions at {seq}"));
    if let Body::Text {
        mentions: to,
        mention_all,
        ..
    } = &mut body
    {
        *to = mentions.iter().map(|user| (*user).clone()).collect();
        *mention_all = all;
    }
    entry(conversation, seq, sender, &format!("mention-{seq}"), body)
}

/// `mentions` counts the text messages of others after the read watermark that name the
/// user or everyone — derived like `unread`, so reading clears it.
pub async fn mentions_count_texts_that_name_the_user<S: StoreService>(store: &S) {
    let alice = user("alice");
    let bob = user("bob");
    let carol = user("carol");
    let chat = create_group(
        store,
        &alice,
        &[
            (&alice, Role::Owner),
            (&bob, Role::Member),
            (&carol, Role::Member),
        ],
    )
    .await;
    for message in [
        mentioning(&chat, 1, &alice, &[&bob], false),
        mentioning(&chat, 2, &carol, &[&alice, &bob], false),
        mentioning(&chat, 3, &alice, &[], true),
        mentioning(&chat, 4, &bob, &[&bob], false),
        text(&chat, 5, &alice, "plain"),
    ] {
        append(store, &message).await;
    }
    assert_eq!(
        counts_of(store, &bob, &chat).await,
        (4, 3),
        "1, 2 and @all; not his own"
    );
    assert_eq!(
        counts_of(store, &alice, &chat).await,
        (2, 1),
        "carol's; not her own @all"
    );
    assert_eq!(counts_of(store, &carol, &chat).await, (4, 1), "the @all");
    receipt(store, &chat, &bob, ReceiptKind::Read, 2)
        .await
        .expect("read");
    assert_eq!(
        counts_of(store, &bob, &chat).await,
        (2, 1),
        "reading clears what it covers"
    );
}
