//! An integrator's own chat server, composed from the messenger SDK's crates in one axum app:
//!
//! - **its own login**: `POST /login` gives a session id (cookie `session=...`); HTTP routes
//!   read the cookie, and the WebSocket `hello` carries the session id as its token. The SDK
//!   learns who a session is through [`Sessions`], the app's own
//!   [`Authenticate`] service — not the SDK's token format;
//! - **its own HTTP routes** that call the chat engine directly: `POST /direct/{user}` opens a
//!   direct conversation, `POST /conversations/{id}/messages` sends as the logged-in user,
//!   `GET /conversations/{id}/messages` reads history — with the same guarantees a WebSocket
//!   client gets (membership checked, sequenced, durable, fanned out to connected devices);
//! - **a bot** ([`ECHO_BOT`]) that answers every text message sent to it, through the engine;
//! - **the SDK's routes mounted**: the WebSocket endpoint `GET /ws`, `/healthz`, `/readyz`.
//!
//! Everything runs in one process on the embedded backends.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use messenger_core::auth::{Authenticate, Identity};
use messenger_core::protocol::{ErrorCode, NewBody};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, DomainEvent, Error, ErrorKind, Seq, UserId, call,
};
use messenger_fanout::Fanout;
use messenger_fanout::local::LocalFanout;
use messenger_fanout::presence::{Presence, memory::MemoryPresence};
use messenger_sequencer::Sequencer;
use messenger_sequencer::memory::MemorySequencer;
use messenger_socket::Node;
use messenger_socket::engine::{
    Engine, EngineConfig, OpenDirect, ReadHistory, SendMessage, Services,
};
use messenger_socket::hub::Hub;
use messenger_socket::{Server, ServerConfig};
use messenger_store::{EmbeddedStore, Store};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The bot's user id: open a direct conversation with it and it echoes what you write.
pub const ECHO_BOT: &str = "echo-bot";

type AppStore = Store<EmbeddedStore>;
/// The engine this app composes: embedded store, memory sequencer, in-process fanout, the
/// app's own sessions as authenticator, memory presence.
pub type AppEngine = Engine<
    Services<
        AppStore,
        Sequencer<MemorySequencer<AppStore>>,
        Fanout<LocalFanout<Arc<Hub>>>,
        Sessions,
        Presence<MemoryPresence>,
    >,
>;

/// The app's own sessions: session id → who is logged in, on which device.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    by_id: Arc<Mutex<HashMap<String, Identity>>>,
}

impl Sessions {
    /// Logs `identity` in; answers the new session's id.
    pub fn login(&self, identity: Identity) -> String {
        use rand::Rng;
        let id: String = (0..24)
            .map(|_| char::from(b'a' + rand::rng().random_range(0..26u8)))
            .collect();
        self.lock().insert(id.clone(), identity);
        id
    }

    /// Who session `id` is.
    pub fn get(&self, id: &str) -> Option<Identity> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Identity>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The SDK's WebSocket asks this on `hello`: the token is a session id of this app.
impl tower::Service<Authenticate> for Sessions {
    type Response = Identity;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Identity, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Authenticate) -> Self::Future {
        let found = self.get(&request.token);
        Box::pin(async move {
            found.ok_or_else(|| Error::refused(ErrorCode::NotAuthenticated, "no such session"))
        })
    }
}

#[derive(Clone)]
struct AppState {
    engine: AppEngine,
    sessions: Sessions,
}

/// Builds the engine and the app over a SQLite file under `data_dir`, and serves it on
/// `listener` until `shutdown` completes (then drains the WebSocket connections).
///
/// # Errors
/// When the store cannot be opened, or an I/O error of the listener.
pub async fn serve(
    data_dir: &Path,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let store = Store::new(EmbeddedStore::open(data_dir.join("messages.db"))?);
    let node = Node::single();
    let sessions = Sessions::default();
    let services = Services {
        sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
        fanout: Fanout::new(LocalFanout::new(node.hub())),
        store,
        auth: sessions.clone(),
        presence: Presence::new(MemoryPresence::new()),
    };
    // The bot reads the engine's domain events.
    let (events, bot_events) = mpsc::unbounded_channel();
    let engine = Engine::new(services, node, EngineConfig::default()).with_event_sink(Arc::new(
        move |event| {
            let _ = events.send(event);
        },
    ));
    tokio::spawn(run_echo_bot(engine.clone(), bot_events));

    let state = AppState {
        engine: engine.clone(),
        sessions,
    };
    let routes = Router::new()
        .route("/login", post(login))
        .route("/direct/{user}", post(open_direct))
        .route(
            "/conversations/{id}/messages",
            post(send_message).get(history),
        )
        .with_state(state);
    // The SDK's own routes (`/ws`, `/healthz`, `/readyz`), with the connection limit and the
    // drain, and the app's routes beside them.
    Server::new(engine, ServerConfig::default())
        .with_routes(routes)
        .run(listener, shutdown)
        .await?;
    Ok(())
}

/// Answers every text message sent to [`ECHO_BOT`] by someone else, in the same conversation.
async fn run_echo_bot(engine: AppEngine, mut events: mpsc::UnboundedReceiver<DomainEvent>) {
    let Ok(bot) = UserId::new(ECHO_BOT) else {
        return;
    };
    let Ok(device) = DeviceId::new("bot") else {
        return;
    };
    let actor = Identity::new(bot.clone(), device);
    while let Some(event) = events.recv().await {
        let DomainEvent::MessageStored { message } = event else {
            continue;
        };
        let Body::Text { text, .. } = &message.body else {
            continue;
        };
        let for_bot = ConversationId::direct(&message.sender, &bot)
            .is_ok_and(|direct| direct == message.conversation);
        if message.sender == bot || !for_bot {
            continue;
        }
        // Keyed by the message answered: a replayed event cannot make the bot answer twice.
        let Ok(client_msg_id) = ClientMsgId::new(format!("echo-{}", message.seq)) else {
            continue;
        };
        let reply = SendMessage {
            resend: false,
            actor: actor.clone(),
            conversation: message.conversation.clone(),
            client_msg_id,
            body: NewBody::text(format!("echo: {text}")),
        };
        if let Err(err) = call(&engine, reply).await {
            tracing::warn!(error = %err, "the echo bot could not answer");
        }
    }
}

#[derive(Deserialize)]
struct Login {
    user: String,
    #[serde(default)]
    device: Option<String>,
}

async fn login(State(state): State<AppState>, Json(login): Json<Login>) -> Response {
    let identity = UserId::new(login.user).and_then(|user| {
        DeviceId::new(login.device.unwrap_or_else(|| "web".into()))
            .map(|device| Identity::new(user, device))
    });
    let identity = match identity {
        Ok(identity) => identity,
        Err(err) => return refusal(&Error::from(err)),
    };
    let session = state.sessions.login(identity);
    (
        [(
            header::SET_COOKIE,
            format!("session={session}; HttpOnly; Path=/"),
        )],
        Json(json!({ "session": session })),
    )
        .into_response()
}

/// The logged-in user of a request: its `session` cookie.
fn actor(state: &AppState, headers: &HeaderMap) -> Option<Identity> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("session="))
        .find_map(|session| state.sessions.get(session))
}

fn log_in_first() -> Response {
    (StatusCode::UNAUTHORIZED, "log in first").into_response()
}

async fn open_direct(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(other): UrlPath<String>,
) -> Response {
    let Some(actor) = actor(&state, &headers) else {
        return log_in_first();
    };
    let other = match UserId::new(other) {
        Ok(other) => other,
        Err(err) => return refusal(&Error::from(err)),
    };
    match call(&state.engine, OpenDirect { actor, other }).await {
        Ok(info) => Json(json!({ "conversation": info.conversation.id })).into_response(),
        Err(err) => refusal(&err),
    }
}

#[derive(Deserialize)]
struct NewMessage {
    text: String,
    /// The caller's idempotency key; a retry with the same key answers the same seq.
    client_msg_id: String,
}

async fn send_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(conversation): UrlPath<String>,
    Json(new): Json<NewMessage>,
) -> Response {
    let Some(actor) = actor(&state, &headers) else {
        return log_in_first();
    };
    let ids = ConversationId::new(conversation)
        .and_then(|conversation| Ok((conversation, ClientMsgId::new(new.client_msg_id)?)));
    let (conversation, client_msg_id) = match ids {
        Ok(ids) => ids,
        Err(err) => return refusal(&Error::from(err)),
    };
    let send = SendMessage {
        resend: false,
        actor,
        conversation,
        client_msg_id,
        body: NewBody::text(new.text),
    };
    match call(&state.engine, send).await {
        Ok(sent) => (
            StatusCode::CREATED,
            Json(json!({ "seq": sent.message.seq, "duplicate": sent.duplicate })),
        )
            .into_response(),
        Err(err) => refusal(&err),
    }
}

#[derive(Deserialize)]
struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(conversation): UrlPath<String>,
    Query(page): Query<Page>,
) -> Response {
    let Some(actor) = actor(&state, &headers) else {
        return log_in_first();
    };
    let conversation = match ConversationId::new(conversation) {
        Ok(conversation) => conversation,
        Err(err) => return refusal(&Error::from(err)),
    };
    let read = ReadHistory {
        actor,
        conversation,
        after: Some(Seq(page.after.unwrap_or(0))),
        before: None,
        limit: page.limit,
    };
    match call(&state.engine, read).await {
        Ok(page) => Json(json!({ "messages": page.messages, "head": page.head })).into_response(),
        Err(err) => refusal(&err),
    }
}

/// An engine refusal as an HTTP answer: the status of its kind, the protocol code and our
/// words (a backend's own text never reaches the client).
fn refusal(err: &Error) -> Response {
    let (code, message) = err.client_message();
    let status = match err.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidRequest | ErrorKind::Conflict => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}
