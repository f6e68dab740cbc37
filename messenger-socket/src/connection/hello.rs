//! The first frame: `hello`, authentication, `welcome`.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use messenger_core::auth::{Authenticate, Identity};
use messenger_core::protocol::{
    ClientFrame, PROTOCOL_VERSION, ServerFrame, close, decode_client_frame,
};
use messenger_core::{Timestamp, call};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

use super::closing::{transport_close, truncate};
use crate::engine::{Backends, Engine};

/// Reads the `hello` frame and authenticates. `Err(Some(close))` closes with a code;
/// `Err(None)` means the peer went away.
pub(super) async fn hello<B, S>(
    node: &Engine<B>,
    ws: &mut WebSocketStream<S>,
) -> Result<Identity, Option<(u16, String)>>
where
    B: Backends,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let text = match ws.next().await {
            Some(Ok(tungstenite::Message::Text(text))) => text,
            Some(Ok(tungstenite::Message::Binary(_))) => {
                return Err(Some((close::UNSUPPORTED_DATA, "text frames only".into())));
            }
            Some(Ok(tungstenite::Message::Close(_))) | None => return Err(None),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(transport_close(&err)),
        };
        let (v, token) = match decode_client_frame(&text) {
            Ok(ClientFrame::Hello { v, token }) => (v, token),
            Ok(_) => {
                return Err(Some((
                    close::PROTOCOL_ERROR,
                    "the first frame must be hello".into(),
                )));
            }
            Err(err) => return Err(Some((close::PROTOCOL_ERROR, err.message))),
        };
        if v != PROTOCOL_VERSION {
            return Err(Some((
                close::UNSUPPORTED_VERSION,
                format!("this server speaks protocol {PROTOCOL_VERSION}"),
            )));
        }
        let identity = call(
            node.services().auth(),
            Authenticate {
                token: Arc::from(token),
            },
        )
        .await
        .map_err(|err| Some((close::UNAUTHORIZED, truncate(err.client_message().1))))?;
        if identity
            .expires_at
            .is_some_and(|expiry| expiry <= Timestamp::now())
        {
            return Err(Some((close::TOKEN_EXPIRED, "token expired".into())));
        }
        let welcome = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            user: identity.user.clone(),
            device: identity.device.clone(),
            server_time: Timestamp::now(),
            limits: node.config().limits.clone(),
        };
        ws.send(tungstenite::Message::text(welcome.to_json()))
            .await
            .map_err(|_| None)?;
        return Ok(identity);
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::protocol::close;
    use tokio_tungstenite::tungstenite;

    use super::super::testing::{Harness, close_code, send};

    #[tokio::test]
    async fn the_first_frame_must_be_hello() {
        let harness = Harness::new();
        let mut peer = harness.raw().await;
        send(&mut peer, r#"{"type":"ping","id":"p"}"#).await;
        assert_eq!(close_code(&mut peer).await, Some(close::PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused_with_its_own_code() {
        let harness = Harness::new();
        let mut peer = harness.raw().await;
        send(&mut peer, r#"{"type":"hello","v":2,"token":"alice:phone"}"#).await;
        assert_eq!(
            close_code(&mut peer).await,
            Some(close::UNSUPPORTED_VERSION)
        );
    }

    #[tokio::test]
    async fn a_refused_token_closes_unauthorized() {
        let harness = Harness::new();
        let mut peer = harness.raw().await;
        send(&mut peer, r#"{"type":"hello","v":1,"token":"no device"}"#).await;
        assert_eq!(close_code(&mut peer).await, Some(close::UNAUTHORIZED));
    }

    #[tokio::test]
    async fn a_binary_hello_is_unsupported_data() {
        use futures_util::SinkExt;

        let harness = Harness::new();
        let mut peer = harness.raw().await;
        peer.send(tungstenite::Message::binary(b"{}".to_vec()))
            .await
            .expect("written");
        assert_eq!(close_code(&mut peer).await, Some(close::UNSUPPORTED_DATA));
    }

    #[tokio::test]
    async fn no_hello_in_time_closes_with_hello_timeout() {
        let harness = Harness::with_config(crate::EngineConfig {
            hello_timeout: std::time::Duration::from_millis(50),
            ..crate::EngineConfig::default()
        });
        let mut peer = harness.raw().await;
        assert_eq!(close_code(&mut peer).await, Some(close::HELLO_TIMEOUT));
    }
}
