//! The client against a tiny in-test WebSocket server that speaks a few frames.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messenger_core::protocol::{ClientFrame, ErrorCode, Limits, ServerFrame, close};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, ErrorKind, Message, Seq, Timestamp, UserId,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::{Client, ClientConfig, ClientEvent, Events};

const WAIT: Duration = Duration::from_secs(5);

/// The server side of one fake connection.
struct FakeConnection {
    socket: WebSocketStream<TcpStream>,
}

impl FakeConnection {
    /// The next client frame, skipping `delivered` reports and WebSocket control frames.
    async fn recv(&mut self) -> ClientFrame {
        loop {
            let received = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a client frame in time")
                .expect("the client is still connected")
                .expect("a readable frame");
            if let WsMessage::Text(text) = received {
                let frame = messenger_core::protocol::decode_client_frame(&text).unwrap();
                if !matches!(frame, ClientFrame::Delivered { .. }) {
                    return frame;
                }
            }
        }
    }

    async fn send(&mut self, frame: ServerFrame) {
        self.socket
            .send(WsMessage::text(frame.to_json()))
            .await
            .unwrap();
    }

    async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "test".into(),
        };
        let _ = self.socket.close(Some(frame)).await;
    }

    /// Expects `hello` (returning its token) and answers `welcome`.
    async fn welcome(&mut self, user: &str) -> String {
        let ClientFrame::Hello { token, .. } = self.recv().await else {
            panic!("expected hello");
        };
        self.send(ServerFrame::Welcome {
            v: 1,
            user: UserId::new(user).unwrap(),
            device: DeviceId::new("phone").unwrap(),
            server_time: Timestamp::now(),
            limits: Limits::default(),
        })
        .await;
        token
    }

    /// Expects `sync` and returns its cursors.
    async fn sync(&mut self) -> BTreeMap<ConversationId, Seq> {
        match self.recv().await {
            ClientFrame::Sync { cursors, .. } => cursors,
            other => panic!("expected sync, got {other:?}"),
        }
    }
}

/// Accepts connections on 127.0.0.1.
struct FakeServer {
    listener: TcpListener,
    url: String,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        FakeServer { listener, url }
    }

    async fn accept(&self) -> FakeConnection {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a connection in time")
            .unwrap();
        FakeConnection {
            socket: tokio_tungstenite::accept_async(stream).await.unwrap(),
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(&self.url, "alice:phone")
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .request_timeout(Duration::from_secs(5))
    }

    /// Connects a client: hello, welcome, sync. Returns the sync cursors too.
    async fn connect(
        &self,
        config: ClientConfig,
    ) -> (
        Client,
        Events,
        FakeConnection,
        BTreeMap<ConversationId, Seq>,
    ) {
        let (client, mut connection) = tokio::join!(Client::connect(config), async {
            let mut connection = self.accept().await;
            connection.welcome("alice").await;
            connection
        });
        let (client, events) = client.unwrap();
        let cursors = connection.sync().await;
        (client, events, connection, cursors)
    }
}

fn conv() -> ConversationId {
    ConversationId::new("g:test").unwrap()
}

fn entry(seq: u64, body: Body) -> Arc<Message> {
    Arc::new(Message {
        conversation: conv(),
        seq: Seq(seq),
        sender: UserId::new("bob").unwrap(),
        sender_device: DeviceId::new("phone").unwrap(),
        client_msg_id: ClientMsgId::new(format!("b{seq}")).unwrap(),
        sent_at: Timestamp(seq),
        body,
    })
}

fn text(seq: u64) -> Arc<Message> {
    entry(seq, Body::text(format!("#{seq}")))
}

/// The seqs of the next `count` message events, skipping other events.
async fn next_seqs(events: &mut Events, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let message = events.wait_for_message(WAIT, |_| true).await.unwrap();
        seqs.push(message.seq.get());
    }
    seqs
}

#[tokio::test]
async fn resumes_from_cursors_fills_gaps_and_drops_duplicates() {
    let server = FakeServer::start().await;
    let config = server.config().cursors(BTreeMap::from([(conv(), Seq(2))]));
    let (client, mut events, mut connection, cursors) = server.connect(config).await;
    assert_eq!(cursors, BTreeMap::from([(conv(), Seq(2))]));
    assert!(matches!(
        events.next().await,
        Some(ClientEvent::Connected { .. })
    ));

    connection
        .send(ServerFrame::Message { message: text(3) })
        .await;
    connection
        .send(ServerFrame::Message { message: text(6) })
        .await;
    let ClientFrame::History { id, after, .. } = connection.recv().await else {
        panic!("expected a gap fill");
    };
    assert_eq!(after, Some(Seq(3)));
    connection
        .send(ServerFrame::Message { message: text(7) })
        .await;
    connection
        .send(ServerFrame::History {
            id,
            conversation: conv(),
            messages: vec![entry(4, Body::Void), text(5), text(6)],
            head: Seq(7),
        })
        .await;
    connection
        .send(ServerFrame::Message { message: text(6) })
        .await;
    connection
        .send(ServerFrame::Message { message: text(8) })
        .await;
    assert_eq!(next_seqs(&mut events, 5).await, [3, 5, 6, 7, 8]);
    assert_eq!(client.cursors(), BTreeMap::from([(conv(), Seq(8))]));
    client.close().await;
}

#[tokio::test]
async fn resends_the_outbox_in_order_with_the_same_ids_after_a_restart() {
    let server = FakeServer::start().await;
    let (client, mut events, mut connection, _) = server.connect(server.config()).await;
    let first = client.send_text(&conv(), "one");
    let second = client.send_text(&conv(), "two");
    let third = client.send_text(&conv(), "three");
    let mut ids = Vec::new();
    for expected in ["one", "two", "three"] {
        let ClientFrame::Send {
            client_msg_id,
            body,
            ..
        } = connection.recv().await
        else {
            panic!("expected a send");
        };
        assert_eq!(body, messenger_core::protocol::NewBody::text(expected));
        ids.push(client_msg_id);
    }
    let sent = |id: &ClientMsgId, seq: u64, duplicate: bool| ServerFrame::Sent {
        conversation: conv(),
        client_msg_id: id.clone(),
        seq: Seq(seq),
        sent_at: Timestamp(seq),
        duplicate,
    };
    connection.send(sent(&ids[0], 1, false)).await;
    assert_eq!(first.await.unwrap().seq, Seq(1));
    assert_eq!(client.outbox_len(), 2);

    connection
        .send(ServerFrame::Reconnect {
            after_ms: 0,
            reason: "restart".into(),
        })
        .await;
    connection.close(close::SERVICE_RESTART).await;
    drop(connection);
    let disconnected = events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Disconnected { .. })
        })
        .await
        .unwrap();
    let ClientEvent::Disconnected { reason, retry_in } = disconnected else {
        unreachable!()
    };
    assert_eq!(reason.kind(), ErrorKind::Unavailable);
    assert!(retry_in.is_some());

    let mut connection = server.accept().await;
    connection.welcome("alice").await;
    connection.sync().await;
    for expected in &ids[1..] {
        match connection.recv().await {
            ClientFrame::Send { client_msg_id, .. } => assert_eq!(&client_msg_id, expected),
            other => panic!("expected a resend, got {other:?}"),
        }
    }
    connection.send(sent(&ids[1], 2, true)).await;
    connection.send(sent(&ids[2], 3, false)).await;
    let second = second.await.unwrap();
    assert_eq!((second.seq, second.duplicate), (Seq(2), true));
    assert_eq!(third.await.unwrap().seq, Seq(3));
    assert_eq!(client.outbox_len(), 0);
    client.close().await;
}

#[tokio::test]
async fn errors_map_to_kinds() {
    let server = FakeServer::start().await;
    let (client, _events, mut connection, _) = server.connect(server.config()).await;

    let bob = UserId::new("bob").unwrap();
    let (answer, ()) = tokio::join!(client.open_direct(&bob), async {
        let frame = connection.recv().await;
        let ClientFrame::OpenDirect { id, .. } = frame else {
            panic!("expected open_direct, got {frame:?}");
        };
        connection
            .send(ServerFrame::error(id, ErrorCode::NotFound, "no such user"))
            .await;
    });
    assert_eq!(answer.unwrap_err().kind(), ErrorKind::NotFound);

    let refused = client.send_text(&conv(), "hi");
    let ClientFrame::Send {
        conversation,
        client_msg_id,
        ..
    } = connection.recv().await
    else {
        panic!("expected a send");
    };
    connection
        .send(ServerFrame::Error {
            id: None,
            conversation: Some(conversation),
            client_msg_id: Some(client_msg_id),
            code: ErrorCode::NotMember,
            message: "not a member".into(),
            retryable: false,
        })
        .await;
    assert_eq!(refused.await.unwrap_err().kind(), ErrorKind::Forbidden);
    assert_eq!(client.outbox_len(), 0);

    let (pong, ()) = tokio::join!(client.ping(), async {
        let ClientFrame::Ping { id } = connection.recv().await else {
            panic!("expected ping");
        };
        connection.send(ServerFrame::Pong { id }).await;
    });
    assert!(pong.is_ok());
    client.close().await;
}

#[tokio::test]
async fn a_refused_token_fails_connect() {
    let server = FakeServer::start().await;
    let (client, ()) = tokio::join!(Client::connect(server.config()), async {
        let mut connection = server.accept().await;
        let _ = connection.recv().await;
        connection.close(close::UNAUTHORIZED).await;
    });
    assert_eq!(client.unwrap_err().kind(), ErrorKind::Unauthorized);
}

#[tokio::test]
async fn an_expired_token_waits_for_a_fresh_one() {
    let server = FakeServer::start().await;
    let (client, mut events, mut connection, _) = server.connect(server.config()).await;
    connection.close(close::TOKEN_EXPIRED).await;
    let event = events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Disconnected { .. })
        })
        .await
        .unwrap();
    let ClientEvent::Disconnected { reason, retry_in } = event else {
        unreachable!()
    };
    assert_eq!((reason.kind(), retry_in), (ErrorKind::Unauthorized, None));
    client.set_token("alice:phone2");
    let mut connection = server.accept().await;
    assert_eq!(connection.welcome("alice").await, "alice:phone2");
    connection.sync().await;
    events
        .wait_for(WAIT, |event| matches!(event, ClientEvent::Connected { .. }))
        .await
        .unwrap();
    client.close().await;
}

#[tokio::test]
async fn a_fatal_close_ends_the_client() {
    let server = FakeServer::start().await;
    let (client, mut events, mut connection, _) = server.connect(server.config()).await;
    let pending = client.send_text(&conv(), "never acked");
    let _ = connection.recv().await;
    connection.close(close::UNSUPPORTED_VERSION).await;
    let event = events
        .wait_for(WAIT, |event| matches!(event, ClientEvent::Closed { .. }))
        .await
        .unwrap();
    let ClientEvent::Closed {
        reason: Some(reason),
    } = event
    else {
        panic!("expected a reason");
    };
    assert_eq!(reason.kind(), ErrorKind::InvalidRequest);
    assert!(pending.await.is_err());
    assert!(client.is_closed());
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn close_sends_a_normal_close() {
    let server = FakeServer::start().await;
    let (client, mut events, mut connection, _) = server.connect(server.config()).await;
    let (_, received) = tokio::join!(client.close(), async {
        loop {
            match connection.socket.next().await {
                Some(Ok(WsMessage::Close(frame))) => {
                    break frame.map(|frame| u16::from(frame.code));
                }
                Some(Ok(_)) => {}
                _ => break None,
            }
        }
    });
    assert_eq!(received, Some(close::NORMAL));
    let last = events
        .wait_for(WAIT, |event| matches!(event, ClientEvent::Closed { .. }))
        .await
        .unwrap();
    assert!(matches!(last, ClientEvent::Closed { reason: None }));
    assert_eq!(
        client.ping().await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
}

/// The client's socket has `TCP_NODELAY` set (read back with `getsockopt`).
#[tokio::test]
async fn the_client_socket_has_nodelay_set() {
    let server = FakeServer::start().await;
    let (handshake, _connection) = tokio::join!(
        super::connection::handshake(&server.url, "alice:phone", WAIT),
        async {
            let mut connection = server.accept().await;
            connection.welcome("alice").await;
            connection
        }
    );
    let Ok((socket, _welcome)) = handshake else {
        panic!("handshake failed");
    };
    match socket.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => assert!(tcp.nodelay().unwrap()),
        _ => panic!("expected a plain TCP socket"),
    }
}
