//! Media helpers for the end-to-end tests: a raw HTTP/1.1 client over a tokio TcpStream and
//! the frames of a media send.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use messenger_core::protocol::{ServerFrame, UploadTicket};
use messenger_core::{Body, ConversationId, MediaBody, MediaUpdate, Message, Seq};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Raw, WAIT, next_frame, send_json};

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn offset(&self) -> Option<u64> {
        self.header("upload-offset")
            .and_then(|value| value.parse().ok())
    }
}

fn head_of(method: &str, target: &str, headers: &[(&str, &str)], length: Option<usize>) -> String {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(length) = length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Sends one request (`target` is the path, or a full `http://host/path` URL) and reads the
/// whole response.
pub async fn request(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let target = path_of(target);
    let mut stream = TcpStream::connect(address).await.expect("connect http");
    let length = (method != "GET" && method != "HEAD").then_some(body.len());
    stream
        .write_all(head_of(method, &target, headers, length).as_bytes())
        .await
        .expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    parse(&raw, method == "HEAD")
}

/// Sends the head of a request announcing `total` body bytes, then only `sent` of them, then
/// drops the connection: an upload cut by the network.
pub async fn cut_request(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    total: usize,
    sent: &[u8],
) {
    let target = path_of(target);
    let mut stream = TcpStream::connect(address).await.expect("connect http");
    stream
        .write_all(head_of(method, &target, headers, Some(total)).as_bytes())
        .await
        .expect("write head");
    stream.write_all(sent).await.expect("write body");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
}

fn path_of(target: &str) -> String {
    match target.strip_prefix("http://") {
        Some(rest) => rest
            .find('/')
            .map_or("/".to_owned(), |at| rest[at..].to_owned()),
        None => target.to_owned(),
    }
}

fn parse(raw: &[u8], head_only: bool) -> Response {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    if head_only {
        body.clear();
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|window| window == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

/// `size` bytes that start like a PNG file (the rest is a pattern).
pub fn png(size: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let mut state: u32 = 0x1234_5678;
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.push(state as u8);
    }
    bytes.truncate(size);
    bytes
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Opens the direct conversation with `other` on a raw socket.
pub async fn open_direct(ws: &mut Raw, other: &str) -> ConversationId {
    send_json(
        ws,
        serde_json::json!({"type": "open_direct", "id": "open", "user": other}),
    )
    .await;
    loop {
        if let ServerFrame::Conversation { conversation, .. } = next_frame(ws).await {
            return conversation.id;
        }
    }
}

/// Sends a media message and returns its seq and upload ticket.
pub async fn send_media(
    ws: &mut Raw,
    conversation: &ConversationId,
    key: &str,
    media: serde_json::Value,
) -> (Seq, UploadTicket) {
    let mut body = media;
    body["kind"] = serde_json::json!("media");
    send_json(
        ws,
        serde_json::json!({"type": "send", "conversation": conversation, "client_msg_id": key, "body": body}),
    )
    .await;
    let mut sent = None;
    loop {
        match next_frame(ws).await {
            ServerFrame::Sent { seq, .. } => sent = Some(seq),
            ServerFrame::Upload { seq, upload, .. } => {
                assert_eq!(Some(seq), sent, "upload comes right after sent");
                return (seq, upload);
            }
            ServerFrame::Error { code, message, .. } => panic!("media refused: {code:?} {message}"),
            _ => {}
        }
    }
}

/// The next log entry delivered on `ws` (other frames skipped).
pub async fn next_message(ws: &mut Raw) -> Arc<Message> {
    loop {
        if let ServerFrame::Message { message } = next_frame(ws).await {
            return message;
        }
    }
}

/// The next media status entry delivered on `ws` (other entries skipped).
pub async fn next_status(ws: &mut Raw) -> (Seq, MediaUpdate) {
    loop {
        let message = next_message(ws).await;
        if let Body::MediaStatus(update) = &message.body {
            return (message.seq, MediaUpdate::clone(update));
        }
    }
}

pub fn media_of(message: &Message) -> &MediaBody {
    match &message.body {
        Body::Media(media) => media,
        other => panic!("expected media at seq {}, got {other:?}", message.seq),
    }
}

/// Uploads `bytes` whole with `PUT`.
pub async fn put(
    address: SocketAddr,
    ticket: &UploadTicket,
    token: &str,
    bytes: &[u8],
) -> Response {
    let bearer = format!("Bearer {token}");
    request(
        address,
        "PUT",
        &ticket.url,
        &[
            ("Authorization", &bearer),
            ("Upload-Ticket", &ticket.ticket),
        ],
        bytes,
    )
    .await
}

/// `GET` with a bearer token and extra headers.
pub async fn get(
    address: SocketAddr,
    url: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Response {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    request(address, "GET", url, &headers, &[]).await
}

/// `HEAD` on the upload URL: the received offset.
pub async fn offset(address: SocketAddr, ticket: &UploadTicket, token: &str) -> Response {
    let bearer = format!("Bearer {token}");
    request(
        address,
        "HEAD",
        &ticket.url,
        &[
            ("Authorization", &bearer),
            ("Upload-Ticket", &ticket.ticket),
        ],
        &[],
    )
    .await
}

/// One HTTP/1.1 connection kept alive across requests, as a pooled client uses it.
pub struct KeepAlive {
    stream: TcpStream,
    /// Bytes read past the last response.
    buffered: Vec<u8>,
}

impl KeepAlive {
    pub async fn connect(address: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: TcpStream::connect(address).await.expect("connect http"),
            buffered: Vec::new(),
        }
    }

    /// Writes one request (body with `Content-Length`, or chunked when `chunked`) while
    /// reading its response, as a client does that sends the body without waiting. `Err`
    /// when the connection broke (closed or reset) before a whole response arrived.
    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        chunked: bool,
    ) -> Result<Response, String> {
        let target = path_of(target);
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut payload = Vec::new();
        if chunked {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(16 * 1024) {
                payload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                payload.extend_from_slice(chunk);
                payload.extend_from_slice(b"\r\n");
            }
            payload.extend_from_slice(b"0\r\n\r\n");
        } else {
            if method != "GET" && method != "HEAD" {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            payload.extend_from_slice(body);
        }
        let buffered = &mut self.buffered;
        let (mut reader, mut writer) = self.stream.split();
        let write = async {
            // A server that answers before reading the body may stop reading: the write
            // then fails, and the answer says what happened to the connection.
            let _ = writer.write_all(head.as_bytes()).await;
            let _ = writer.write_all(&payload).await;
        };
        let read = async {
            loop {
                if let Some(response) = take_response(buffered, method == "HEAD") {
                    return Ok(response);
                }
                let mut chunk = vec![0u8; 64 * 1024];
                match reader.read(&mut chunk).await {
                    Ok(0) => return Err("the connection was closed".to_owned()),
                    Ok(n) => buffered.extend_from_slice(&chunk[..n]),
                    Err(err) => return Err(format!("the connection broke: {err}")),
                }
            }
        };
        let (_, response) = tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
            .await
            .expect("response in time");
        response
    }
}

/// A whole response (with a `Content-Length` body) from the front of `buffered`, if there.
fn take_response(buffered: &mut Vec<u8>, head_only: bool) -> Option<Response> {
    let split = buffered
        .windows(4)
        .position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buffered[..split]).to_ascii_lowercase();
    let length: usize = if head_only {
        0
    } else {
        head.lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    };
    let end = split + 4 + length;
    if buffered.len() < end {
        return None;
    }
    let raw: Vec<u8> = buffered.drain(..end).collect();
    Some(parse(&raw, head_only))
}
