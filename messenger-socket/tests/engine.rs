//! The engine called from code, wrapped in stock tower layers and ours, with real WebSocket
//! devices connected: what a service call does reaches the devices exactly as a WebSocket
//! client's frames do (sequenced, fanned out, receipts), and refusals carry the protocol codes.

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messenger_core::auth::Identity;
use messenger_core::protocol::{ErrorCode, NewBody, ServerFrame};
use messenger_core::{
    Body, ClientMsgId, DeviceId, ErrorKind, ReceiptKind, ReceiptUpdate, Seq, TypingUpdate, UserId,
    call,
};
use messenger_fanout::presence::{Presence, memory::MemoryPresence};
use messenger_fanout::{Fanout, local::LocalFanout};
use messenger_sequencer::{Sequencer, memory::MemorySequencer};
use messenger_socket::auth::DevAuthenticator;
use messenger_socket::engine::layer::PerUserRateLimitLayer;
use messenger_socket::engine::{
    AddMembers, CreateGroup, GetPresence, MarkReceipt, OpenDirect, ReadHistory, SendMessage,
    SetTyping,
};
use messenger_socket::{Backends, Engine, EngineConfig, Node, Server, ServerConfig, Services};
use messenger_store::{EmbeddedStore, Store};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("a server frame");
        }
    }
}

async fn device(url: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = json!({"type": "hello", "v": 1, "token": token});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    assert!(matches!(frame(&mut ws).await, ServerFrame::Welcome { .. }));
    ws.send(Message::text(json!({"type": "sync"}).to_string()))
        .await
        .unwrap();
    loop {
        if let ServerFrame::Synced { .. } = frame(&mut ws).await {
            return ws;
        }
    }
}

/// An engine on the embedded store, in-process fanout and memory presence.
fn engine() -> (Engine<impl Backends>, tempfile::TempDir) {
    engine_with(EngineConfig::default())
}

fn engine_with(config: EngineConfig) -> (Engine<impl Backends>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db")).unwrap());
    let node = Node::single();
    let engine = Engine::new(
        Services {
            sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
            fanout: Fanout::new(LocalFanout::new(node.hub())),
            store,
            auth: DevAuthenticator,
            presence: Presence::new(MemoryPresence::new()),
        },
        node,
        config,
    );
    (engine, dir)
}

fn actor(user: &str) -> Identity {
    Identity::new(UserId::new(user).unwrap(), DeviceId::new("job").unwrap())
}

fn text(text: &str) -> NewBody {
    NewBody::text(text)
}

#[tokio::test]
async fn service_calls_reach_connected_devices_in_order() {
    let (engine, _dir) = engine();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(
        Server::new(engine.clone(), ServerConfig::default()).run(listener, std::future::pending()),
    );

    // Stock layers and ours around the engine: the stack is still a Clone service.
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .load_shed()
        .concurrency_limit(64)
        .layer(PerUserRateLimitLayer::new(
            NonZeroU32::new(1000).unwrap(),
            NonZeroU32::new(1000).unwrap(),
        ))
        .service(engine.clone());

    let mut bob = device(&url, "bob:phone").await;
    let group = call(
        &service,
        CreateGroup {
            actor: actor("alice"),
            title: "ops".into(),
            members: vec![UserId::new("bob").unwrap()],
        },
    )
    .await
    .unwrap();
    let id = group.conversation.id.clone();
    assert_eq!(group.head, Seq(1), "group_created is seq 1");

    for n in 0..5 {
        let sent = call(
            &service,
            SendMessage {
                resend: false,
                actor: actor("alice"),
                conversation: id.clone(),
                client_msg_id: ClientMsgId::new(format!("job-{n}")).unwrap(),
                body: text(&format!("notice {n}")),
            },
        )
        .await
        .unwrap();
        assert_eq!(sent.message.seq, Seq(n + 2));
        assert!(!sent.duplicate);
    }
    // Bob's device gets the group's log live: seq 1..=6, each once, in order.
    let mut seqs = Vec::new();
    while seqs.len() < 6 {
        if let ServerFrame::Message { message } = frame(&mut bob).await {
            assert_eq!(message.conversation, id);
            seqs.push(message.seq.0);
            if message.seq.0 > 1 {
                assert!(
                    matches!(&message.body, Body::Text { text, .. } if text.starts_with("notice"))
                );
            }
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

    // A receipt and typing from code reach the device as events.
    call(
        &service,
        MarkReceipt {
            actor: actor("alice"),
            conversation: id.clone(),
            kind: ReceiptKind::Read,
            seq: Seq(6),
        },
    )
    .await
    .unwrap();
    loop {
        if let ServerFrame::Receipt(ReceiptUpdate { receipts, .. }) = frame(&mut bob).await {
            assert_eq!(receipts.user.as_str(), "alice");
            assert_eq!(receipts.read, Seq(6));
            break;
        }
    }
    call(
        &service,
        SetTyping {
            actor: actor("alice"),
            conversation: id.clone(),
            active: true,
        },
    )
    .await
    .unwrap();
    loop {
        if let ServerFrame::Typing(TypingUpdate { user, active, .. }) = frame(&mut bob).await {
            assert_eq!(user.as_str(), "alice");
            assert!(active);
            break;
        }
    }

    // Refusals keep their protocol codes through the layers.
    let refused = call(
        &service,
        SendMessage {
            resend: false,
            actor: actor("mallory"),
            conversation: id.clone(),
            client_msg_id: ClientMsgId::new("m-1").unwrap(),
            body: text("let me in"),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.refusal_code(), Some(ErrorCode::NotMember));
    let refused = call(
        &service,
        AddMembers {
            actor: actor("bob"),
            conversation: id.clone(),
            users: vec![UserId::new("carol").unwrap()],
            role: messenger_core::Role::Member,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Forbidden);
    assert_eq!(refused.client_message().0, ErrorCode::Forbidden);

    // Reads go through the same checks.
    let page = call(
        &engine,
        ReadHistory {
            actor: actor("bob"),
            conversation: id.clone(),
            after: Some(Seq::ZERO),
            before: None,
            limit: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(page.messages.len(), 6);
    let online = call(
        &engine,
        GetPresence {
            users: vec![UserId::new("bob").unwrap(), UserId::new("alice").unwrap()],
        },
    )
    .await
    .unwrap();
    assert!(online[0].online, "bob's device is connected");
    assert!(!online[1].online, "alice never connected a device");
}

#[tokio::test]
async fn a_user_over_their_rate_is_refused_and_others_are_not() {
    let (engine, _dir) = engine();
    let service = ServiceBuilder::new()
        .layer(PerUserRateLimitLayer::new(
            NonZeroU32::MIN,
            NonZeroU32::new(3).unwrap(),
        ))
        .service(engine);
    let group = call(
        &service,
        CreateGroup {
            actor: actor("alice"),
            title: "t".into(),
            members: vec![UserId::new("bob").unwrap()],
        },
    )
    .await
    .unwrap();
    let id = group.conversation.id;
    let send = |user: &str, key: &str| SendMessage {
        resend: false,
        actor: actor(user),
        conversation: id.clone(),
        client_msg_id: ClientMsgId::new(key).unwrap(),
        body: text("hi"),
    };
    call(&service, send("alice", "a-1")).await.unwrap();
    call(&service, send("alice", "a-2")).await.unwrap();
    let refused = call(&service, send("alice", "a-3")).await.unwrap_err();
    assert_eq!(refused.refusal_code(), Some(ErrorCode::RateLimited));
    assert!(refused.is_temporary());
    // Nothing was stored for the refused send; bob still has his whole budget.
    let sent = call(&service, send("bob", "b-1")).await.unwrap();
    assert_eq!(
        sent.message.seq,
        Seq(4),
        "group_created, a-1, a-2, then b-1"
    );
}

/// The codes and shapes docs/protocol.md gives for these refusals (each differed before).
#[tokio::test]
async fn refusals_have_the_documented_codes_and_shapes() {
    let (engine, _dir) = engine();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(
        Server::new(engine.clone(), ServerConfig::default()).run(listener, std::future::pending()),
    );

    let too_long = call(
        &engine,
        CreateGroup {
            actor: actor("alice"),
            title: "t".repeat(messenger_core::MAX_TITLE_BYTES + 1),
            members: vec![],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(too_long.refusal_code(), Some(ErrorCode::TooLarge));

    let group = call(
        &engine,
        CreateGroup {
            actor: actor("alice"),
            title: "t".into(),
            members: vec![],
        },
    )
    .await
    .unwrap();
    let owner = call(
        &engine,
        AddMembers {
            actor: actor("alice"),
            conversation: group.conversation.id.clone(),
            users: vec![UserId::new("bob").unwrap()],
            role: messenger_core::Role::Owner,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(owner.refusal_code(), Some(ErrorCode::InvalidRequest));

    // Over the WebSocket: a refused `read` carries neither `id` nor `conversation`, and an
    // over-long `unsubscribe_presence` is `too_large`.
    let mut mallory = device(&url, "mallory:phone").await;
    let read = json!({"type": "read", "conversation": group.conversation.id, "seq": 1});
    mallory.send(Message::text(read.to_string())).await.unwrap();
    let refusal = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), mallory.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "error" {
                break frame;
            }
        }
    };
    assert_eq!(refusal["code"], "not_member");
    assert!(refusal.get("conversation").is_none(), "{refusal}");
    assert!(refusal.get("id").is_none(), "{refusal}");

    let users: Vec<String> = (0..257).map(|n| format!("u{n}")).collect();
    let unsubscribe = json!({"type": "unsubscribe_presence", "id": "u", "users": users});
    mallory
        .send(Message::text(unsubscribe.to_string()))
        .await
        .unwrap();
    loop {
        if let ServerFrame::Error { id, code, .. } = frame(&mut mallory).await {
            assert_eq!(code, ErrorCode::TooLarge);
            assert_eq!(id.map(|id| id.to_string()), Some("u".to_owned()));
            break;
        }
    }
}

/// A retry the caller marks `resend` is answered with the original and spends no seq; one
/// that is not leaves a void behind (the append finds the key after a seq was given).
#[tokio::test]
async fn a_resend_through_the_engine_spends_no_seq() {
    let (engine, _dir) = engine();
    let chat = call(
        &engine,
        OpenDirect {
            actor: actor("alice"),
            other: UserId::new("bob").unwrap(),
        },
    )
    .await
    .unwrap()
    .conversation
    .id;
    let send = |key: &str, resend: bool| SendMessage {
        resend,
        actor: actor("alice"),
        conversation: chat.clone(),
        client_msg_id: ClientMsgId::new(key).unwrap(),
        body: text("once"),
    };
    assert_eq!(
        call(&engine, send("k", false)).await.unwrap().message.seq,
        Seq(1)
    );
    let again = call(&engine, send("k", true)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.seq, Seq(1));
    assert_eq!(
        call(&engine, send("next", false))
            .await
            .unwrap()
            .message
            .seq,
        Seq(2),
        "the resend spent no seq"
    );
    assert!(call(&engine, send("k", false)).await.unwrap().duplicate);
    assert_eq!(
        call(&engine, send("last", false))
            .await
            .unwrap()
            .message
            .seq,
        Seq(4),
        "the plain retry left a void at 3"
    );
}

/// What a random run of sends, edits, deletes and reactions must leave: the model's answer
/// to every operation (the seq it is stored at, or the refusal's code) and, at the end, the
/// log read back entry by entry.
mod model {
    use super::*;
    use proptest::prelude::*;

    const USERS: [&str; 3] = ["alice", "bob", "carol"];
    const EMOJIS: [&str; 3] = ["👍", "🎉", "❤️"];
    const MAX_EDITS: u32 = 1;
    const MAX_REACTIONS: usize = 2;

    #[derive(Debug, Clone)]
    enum Op {
        Send(usize),
        Edit(usize, u64),
        Delete(usize, u64),
        React(usize, u64, usize),
        Unreact(usize, u64, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let user = 0..USERS.len();
        // Few seqs, so that operations meet on the same messages (and on nothing: 0, past
        // the head).
        let target = 0u64..10;
        let emoji = 0..EMOJIS.len();
        prop_oneof![
            3 => user.clone().prop_map(Op::Send),
            2 => (user.clone(), target.clone()).prop_map(|(u, t)| Op::Edit(u, t)),
            1 => (user.clone(), target.clone()).prop_map(|(u, t)| Op::Delete(u, t)),
            2 => (user.clone(), target.clone(), emoji.clone())
                .prop_map(|(u, t, e)| Op::React(u, t, e)),
            1 => (user, target, emoji).prop_map(|(u, t, e)| Op::Unreact(u, t, e)),
        ]
    }

    /// One entry of the log as the model holds it.
    #[derive(Debug, Clone)]
    enum Entry {
        /// `group_created`, and the edit, delete and reaction entries: not targets.
        Other,
        Text {
            sender: usize,
            text: String,
            edits: u32,
            deleted_by: Option<usize>,
            reactions: Vec<(usize, Vec<usize>)>,
        },
    }

    /// The model's answer to `op` on `log` (changing it), as the engine must answer.
    fn apply(log: &mut Vec<Entry>, op: &Op, n: usize) -> Result<u64, ErrorCode> {
        let next = log.len() as u64 + 1;
        let (user, target) = match op {
            Op::Send(user) => {
                log.push(Entry::Text {
                    sender: *user,
                    text: format!("m{n}"),
                    edits: 0,
                    deleted_by: None,
                    reactions: Vec::new(),
                });
                return Ok(next);
            }
            Op::Edit(u, t) | Op::Delete(u, t) | Op::React(u, t, _) | Op::Unreact(u, t, _) => {
                (*u, *t)
            }
        };
        let index = usize::try_from(target)
            .ok()
            .filter(|t| *t >= 1 && *t <= log.len());
        let Some(index) = index else {
            return Err(ErrorCode::TargetNotFound);
        };
        let Entry::Text {
            sender,
            text,
            edits,
            deleted_by,
            reactions,
        } = &mut log[index - 1]
        else {
            return Err(ErrorCode::NotEditable);
        };
        if deleted_by.is_some() {
            return Err(ErrorCode::TargetDeleted);
        }
        match op {
            Op::Edit(..) if *sender != user => return Err(ErrorCode::Forbidden),
            Op::Edit(..) if *edits >= MAX_EDITS => return Err(ErrorCode::TooManyEdits),
            Op::Edit(..) => {
                *text = format!("e{n}");
                *edits += 1;
            }
            // alice owns the group: she deletes anyone's message, the others their own.
            Op::Delete(..) if *sender != user && user != 0 => return Err(ErrorCode::Forbidden),
            Op::Delete(..) => {
                *deleted_by = Some(user);
                reactions.clear();
            }
            Op::React(_, _, emoji) => {
                let distinct = reactions.len();
                match reactions.iter_mut().find(|(e, _)| e == emoji) {
                    Some((_, users)) if users.contains(&user) => {
                        return Err(ErrorCode::InvalidRequest);
                    }
                    Some((_, users)) => users.push(user),
                    None if distinct >= MAX_REACTIONS => return Err(ErrorCode::TooLarge),
                    None => reactions.push((*emoji, vec![user])),
                }
            }
            Op::Unreact(_, _, emoji) => {
                let Some(at) = reactions
                    .iter()
                    .position(|(e, users)| e == emoji && users.contains(&user))
                else {
                    return Err(ErrorCode::InvalidRequest);
                };
                reactions[at].1.retain(|u| *u != user);
                if reactions[at].1.is_empty() {
                    reactions.remove(at);
                }
            }
            Op::Send(_) => unreachable!("handled above"),
        }
        log.push(Entry::Other);
        Ok(next)
    }

    fn body(op: &Op, n: usize) -> NewBody {
        let emoji = |e: &usize| EMOJIS[*e].to_owned();
        match op {
            Op::Send(_) => text(&format!("m{n}")),
            Op::Edit(_, t) => NewBody::Edit {
                target: Seq(*t),
                text: format!("e{n}"),
            },
            Op::Delete(_, t) => NewBody::Delete { target: Seq(*t) },
            Op::React(_, t, e) => NewBody::React {
                target: Seq(*t),
                emoji: emoji(e),
            },
            Op::Unreact(_, t, e) => NewBody::Unreact {
                target: Seq(*t),
                emoji: emoji(e),
            },
        }
    }

    fn user_of(op: &Op) -> usize {
        match op {
            Op::Send(u) | Op::Edit(u, _) | Op::Delete(u, _) => *u,
            Op::React(u, ..) | Op::Unreact(u, ..) => *u,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_message_actions_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut config = EngineConfig::default();
                config.limits.max_edits = MAX_EDITS;
                config.limits.max_reactions_per_message = MAX_REACTIONS;
                let (engine, _dir) = engine_with(config);
                let group = call(&engine, CreateGroup {
                    actor: actor(USERS[0]),
                    title: "model".into(),
                    members: USERS[1..].iter().map(|u| UserId::new(*u).unwrap()).collect(),
                })
                .await
                .unwrap();
                let id = group.conversation.id;
                let mut log = vec![Entry::Other];
                for (n, op) in ops.iter().enumerate() {
                    let expected = apply(&mut log, op, n);
                    let answer = call(&engine, SendMessage {
                        resend: false,
                        actor: actor(USERS[user_of(op)]),
                        conversation: id.clone(),
                        client_msg_id: ClientMsgId::new(format!("op-{n}")).unwrap(),
                        body: body(op, n),
                    })
                    .await;
                    let got = answer
                        .map(|sent| sent.message.seq.get())
                        .map_err(|err| err.refusal_code().unwrap_or(ErrorCode::Internal));
                    assert_eq!(got, expected, "op {n}: {op:?}");
                }
                let page = call(&engine, ReadHistory {
                    actor: actor(USERS[2]),
                    conversation: id,
                    after: Some(Seq::ZERO),
                    before: None,
                    limit: Some(200),
                })
                .await
                .unwrap();
                assert_eq!(page.messages.len(), log.len(), "one stored entry per accepted op");
                for (entry, stored) in log.iter().zip(&page.messages) {
                    let Entry::Text { text: want, edits: want_edits, deleted_by, reactions, .. } =
                        entry
                    else {
                        continue;
                    };
                    match (&stored.body, deleted_by) {
                        (Body::Deleted { by, .. }, Some(who)) => {
                            assert_eq!(by.as_str(), USERS[*who], "seq {}", stored.seq);
                        }
                        (Body::Text { text, edits, reactions: got, .. }, None) => {
                            assert_eq!((text, edits), (want, want_edits), "seq {}", stored.seq);
                            let got: Vec<(String, Vec<String>)> = got
                                .iter()
                                .map(|r| (r.emoji.clone(), r.users.iter().map(ToString::to_string).collect()))
                                .collect();
                            let want: Vec<(String, Vec<String>)> = reactions
                                .iter()
                                .map(|(e, users)| {
                                    (EMOJIS[*e].to_owned(), users.iter().map(|u| USERS[*u].to_owned()).collect())
                                })
                                .collect();
                            assert_eq!(got, want, "reactions at seq {}", stored.seq);
                        }
                        (other, _) => panic!("seq {}: {other:?} against {entry:?}", stored.seq),
                    }
                }
            });
        }
    }
}
