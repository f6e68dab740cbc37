//! End to end: media messages through WebSocket + HTTP on the real binary.

mod common;

use std::time::Duration;

use common::media::{
    KeepAlive, cut_request, get, media_of, next_message, next_status, offset, open_direct, png,
    put, request, send_media, sha256_hex,
};
use common::{Server, WAIT, next_frame, raw_authed, send_json};
use messenger_core::protocol::{ErrorCode, ServerFrame};
use messenger_core::{Body, MediaStatus, Seq};

const SECRET: &str = "media-test-secret";

fn media_json(name: &str, mime: &str, bytes: &[u8], with_hash: bool) -> serde_json::Value {
    let mut media = serde_json::json!({"name": name, "mime": mime, "size": bytes.len()});
    if with_hash {
        media["sha256"] = serde_json::json!(sha256_hex(bytes));
    }
    media
}

/// A media message keeps its place, every member device (sender's other device too) gets
/// `ready` as a later entry, a device syncing later sees the entry `ready` in place, and
/// the download serves exactly the bytes with ranges and cache headers.
#[tokio::test]
async fn media_is_sequenced_uploaded_and_ready_on_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let address = server.address;
    let mut phone = raw_authed(&server, "alice:phone").await;
    let mut tablet = raw_authed(&server, "alice:tablet").await;
    let mut bob = raw_authed(&server, "bob:phone").await;
    let chat = open_direct(&mut phone, "bob").await;

    send_json(
        &mut phone,
        serde_json::json!({"type": "send", "conversation": chat, "client_msg_id": "t1", "body": {"kind": "text", "text": "before"}}),
    )
    .await;
    let bytes = png(300_000);
    let (seq, ticket) = send_media(
        &mut phone,
        &chat,
        "m1",
        media_json("cat.png", "image/png", &bytes, true),
    )
    .await;
    assert_eq!(seq, Seq(2), "the media entry is sequenced at once");
    assert!(
        ticket.url.ends_with(&format!("/media/uploads/{chat}/2")),
        "{}",
        ticket.url
    );
    send_json(
        &mut phone,
        serde_json::json!({"type": "send", "conversation": chat, "client_msg_id": "t2", "body": {"kind": "text", "text": "after"}}),
    )
    .await;

    for device in [&mut tablet, &mut bob] {
        let first = next_message(device).await;
        assert_eq!(first.seq, Seq(1));
        let pending = next_message(device).await;
        assert_eq!(pending.seq, Seq(2));
        let media = media_of(&pending);
        assert_eq!(media.status, MediaStatus::Pending);
        assert_eq!((media.name.as_str(), media.size), ("cat.png", 300_000));
        assert!(media.url.is_none());
        assert_eq!(next_message(device).await.seq, Seq(3));
    }

    // Bob's phone goes offline holding seqs 1..=3 (the media entry still pending).
    drop(bob);

    // Nothing is visible before the upload.
    let early = get(
        address,
        &format!("/media/files/{chat}/2"),
        Some("bob:phone"),
        &[],
    )
    .await;
    assert_eq!(early.status, 404, "{}", early.text());

    let done = put(address, &ticket, "alice:phone", &bytes).await;
    assert_eq!(done.status, 201, "{}", done.text());
    let answer: serde_json::Value = serde_json::from_slice(&done.body).unwrap();
    assert_eq!(answer["sha256"], sha256_hex(&bytes));
    let url = answer["url"].as_str().unwrap().to_owned();

    for device in [&mut phone, &mut tablet] {
        let (status_seq, update) = next_status(device).await;
        assert_eq!(
            status_seq,
            Seq(4),
            "the status change is the next entry of the log"
        );
        assert_eq!(update.media_seq, Seq(2));
        assert_eq!(update.status, MediaStatus::Ready);
        assert_eq!(update.url.as_deref(), Some(url.as_str()));
    }

    // Bob's phone comes back with its cursor at 3: the sync brings the status entry, so it
    // learns that the entry it holds is ready.
    let mut bob = common::raw(&server).await;
    send_json(
        &mut bob,
        serde_json::json!({"type": "hello", "v": 1, "token": "bob:phone"}),
    )
    .await;
    assert!(matches!(
        next_frame(&mut bob).await,
        ServerFrame::Welcome { .. }
    ));
    send_json(
        &mut bob,
        serde_json::json!({"type": "sync", "cursors": {chat.as_str(): 3}}),
    )
    .await;
    let missed = next_message(&mut bob).await;
    assert_eq!(
        missed.seq,
        Seq(4),
        "exactly what it missed: the status entry"
    );
    assert!(matches!(&missed.body, Body::MediaStatus(update)
        if update.media_seq == Seq(2) && update.status == MediaStatus::Ready && update.url.as_deref() == Some(url.as_str())));

    // A retry of the same ticket after success: refused, nothing changes.
    let again = put(address, &ticket, "alice:phone", &bytes).await;
    assert_eq!(again.status, 409, "{}", again.text());

    // A device syncing from scratch sees the entry ready in place, and the status entry.
    let mut laptop = raw_authed(&server, "bob:laptop").await;
    send_json(
        &mut laptop,
        serde_json::json!({"type": "history", "id": "h", "conversation": chat, "after": 0}),
    )
    .await;
    let history = loop {
        if let ServerFrame::History { messages, .. } = next_frame(&mut laptop).await {
            break messages;
        }
    };
    let seqs: Vec<u64> = history.iter().map(|m| m.seq.get()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let stored = media_of(&history[1]);
    assert_eq!(stored.status, MediaStatus::Ready);
    assert_eq!(stored.url.as_deref(), Some(url.as_str()));
    assert!(matches!(&history[3].body, Body::MediaStatus(update) if update.media_seq == Seq(2)));

    // Download: whole, ranges, cache headers, revalidation.
    let whole = get(address, &url, Some("bob:phone"), &[]).await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert!(
        whole.body == bytes,
        "the downloaded bytes are the uploaded ones"
    );
    assert_eq!(whole.header("content-type"), Some("image/png"));
    assert_eq!(whole.header("content-length"), Some("300000"));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let cache = whole.header("cache-control").unwrap();
    assert!(cache.starts_with("private, max-age="), "{cache}");
    let etag = whole.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"'), "a strong ETag: {etag}");

    let part = get(
        address,
        &url,
        Some("bob:phone"),
        &[("Range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(part.status, 206);
    assert!(part.body == bytes[1000..2000]);
    assert_eq!(part.header("content-range"), Some("bytes 1000-1999/300000"));
    assert_eq!(part.header("content-length"), Some("1000"));
    let tail = get(address, &url, Some("bob:phone"), &[("Range", "bytes=-10")]).await;
    assert_eq!(tail.status, 206);
    assert!(tail.body == bytes[299_990..]);
    let past = get(
        address,
        &url,
        Some("bob:phone"),
        &[("Range", "bytes=300000-")],
    )
    .await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */300000"));
    let cached = get(
        address,
        &url,
        Some("alice:tablet"),
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    // Players that cannot set headers pass the token in the query string.
    let by_query = get(
        address,
        &format!("{url}?token=bob:phone"),
        None,
        &[("Range", "bytes=0-3")],
    )
    .await;
    assert_eq!(by_query.status, 206);
    assert!(by_query.body == bytes[..4]);

    // Non-members and anonymous requests see nothing.
    let stranger = get(address, &url, Some("carol:phone"), &[]).await;
    assert_eq!(stranger.status, 403, "{}", stranger.text());
    assert!(stranger.body != bytes);
    let anonymous = get(address, &url, None, &[]).await;
    assert_eq!(anonymous.status, 401);
}

/// Oversize, wrong type, bad checksum, foreign and forged tickets: each refused with a clear
/// status, nothing visible at the download URL, and the same ticket still works afterwards.
#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--media-max-bytes", "1000000"]);
    let address = server.address;
    let mut alice = raw_authed(&server, "alice:phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    // Over the server's limit: refused before any seq is allocated.
    send_json(
        &mut alice,
        serde_json::json!({"type": "send", "conversation": chat, "client_msg_id": "huge",
            "body": {"kind": "media", "name": "big.mp4", "mime": "video/mp4", "size": 1_000_001}}),
    )
    .await;
    loop {
        match next_frame(&mut alice).await {
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, ErrorCode::TooLarge);
                break;
            }
            ServerFrame::Sent { .. } => panic!("an oversize media was sequenced"),
            _ => {}
        }
    }

    let bytes = png(50_000);
    let (seq, ticket) = send_media(
        &mut alice,
        &chat,
        "m1",
        media_json("a.png", "image/png", &bytes, true),
    )
    .await;
    let file_url = format!("/media/files/{chat}/{seq}");
    let nothing_visible = |what: &'static str| {
        let file_url = file_url.clone();
        async move {
            let seen = get(address, &file_url, Some("alice:phone"), &[]).await;
            assert_eq!(seen.status, 404, "after {what}: {}", seen.text());
        }
    };

    let mut longer = bytes.clone();
    longer.extend_from_slice(b"extra");
    let too_long = put(address, &ticket, "alice:phone", &longer).await;
    assert_eq!(too_long.status, 413, "{}", too_long.text());
    nothing_visible("an oversize body").await;

    let mut jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0".to_vec();
    jpeg.resize(bytes.len(), 7);
    let wrong_type = put(address, &ticket, "alice:phone", &jpeg).await;
    assert_eq!(wrong_type.status, 415, "{}", wrong_type.text());
    assert!(
        wrong_type.text().contains("image/jpeg"),
        "{}",
        wrong_type.text()
    );
    nothing_visible("a wrong type").await;

    let mut corrupted = bytes.clone();
    corrupted[40_000] ^= 0xff;
    let bad_hash = put(address, &ticket, "alice:phone", &corrupted).await;
    assert_eq!(bad_hash.status, 422, "{}", bad_hash.text());
    nothing_visible("a bad checksum").await;

    // Bob is a member but the ticket is Alice's.
    let foreign = put(address, &ticket, "bob:phone", &bytes).await;
    assert_eq!(foreign.status, 403, "{}", foreign.text());
    assert!(
        foreign.text().contains("another user"),
        "{}",
        foreign.text()
    );
    nothing_visible("a foreign ticket").await;

    let mut forged = ticket.clone();
    forged.ticket.push('x');
    let forged = put(address, &forged, "alice:phone", &bytes).await;
    assert_eq!(forged.status, 401, "{}", forged.text());
    let no_ticket = request(
        address,
        "PUT",
        &ticket.url,
        &[("Authorization", "Bearer alice:phone")],
        &bytes,
    )
    .await;
    assert_eq!(no_ticket.status, 401);
    nothing_visible("a forged ticket").await;

    // The same ticket still uploads the right bytes.
    let done = put(address, &ticket, "alice:phone", &bytes).await;
    assert_eq!(done.status, 201, "{}", done.text());
    let whole = get(address, &file_url, Some("bob:phone"), &[]).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == bytes);
}

/// A refused upload leaves its keep-alive connection usable (the server reads the unread
/// body), or says `Connection: close`: a pooled client's next request on that connection
/// must not fail. Refused before the body is read (413 by `Content-Length`, 403, 401) and
/// in the middle of it (413 on a chunked body), each with 200 kB the server did not want.
#[tokio::test]
async fn a_refused_upload_leaves_the_connection_usable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let address = server.address;
    let mut alice = raw_authed(&server, "alice:phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let bytes = png(50_000);
    let (_, ticket) = send_media(
        &mut alice,
        &chat,
        "m1",
        media_json("a.png", "image/png", &bytes, false),
    )
    .await;
    let too_long = png(200_000);
    let mut forged = ticket.ticket.clone();
    forged.push('x');
    let cases: [(&str, &str, &str, bool, u16); 4] = [
        (
            "declared too long",
            "alice:phone",
            &ticket.ticket,
            false,
            413,
        ),
        ("chunked too long", "alice:phone", &ticket.ticket, true, 413),
        (
            "another user's ticket",
            "bob:phone",
            &ticket.ticket,
            false,
            403,
        ),
        ("a forged ticket", "alice:phone", &forged, false, 401),
    ];
    for (case, token, upload_ticket, chunked, status) in cases {
        let bearer = format!("Bearer {token}");
        let headers = [
            ("Authorization", bearer.as_str()),
            ("Upload-Ticket", upload_ticket),
        ];
        let mut connection = KeepAlive::connect(address).await;
        let refused = connection
            .send("PUT", &ticket.url, &headers, &too_long, chunked)
            .await
            .unwrap_or_else(|err| panic!("{case}: no answer: {err}"));
        assert_eq!(refused.status, status, "{case}: {}", refused.text());
        let closing = refused
            .header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"));
        if closing {
            continue;
        }
        let next = connection
            .send("GET", "/healthz", &[], &[], false)
            .await
            .unwrap_or_else(|err| {
                panic!("{case}: the next request on the kept-alive connection failed: {err}")
            });
        assert_eq!(next.status, 200, "{case}: {}", next.text());
    }
    // The ticket still uploads the right bytes afterwards.
    let done = put(address, &ticket, "alice:phone", &bytes).await;
    assert_eq!(done.status, 201, "{}", done.text());
}

/// An upload cut by the network resumes from the offset the server reports.
#[tokio::test]
async fn an_interrupted_upload_resumes_by_offset() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let address = server.address;
    let mut alice = raw_authed(&server, "alice:phone").await;
    let mut bob = raw_authed(&server, "bob:phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let bytes = png(2 * 1024 * 1024);
    let (seq, ticket) = send_media(
        &mut alice,
        &chat,
        "m1",
        media_json("clip.png", "image/png", &bytes, true),
    )
    .await;
    let bearer = "Bearer alice:phone";
    let headers = [
        ("Authorization", bearer),
        ("Upload-Ticket", ticket.ticket.as_str()),
    ];

    cut_request(
        address,
        "PUT",
        &ticket.url,
        &headers,
        bytes.len(),
        &bytes[..700_000],
    )
    .await;
    // The server notices the cut connection and keeps what arrived.
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let head = offset(address, &ticket, "alice:phone").await;
        if head.status == 200 {
            received = head.offset().expect("Upload-Offset");
            assert_eq!(head.header("upload-length"), Some("2097152"));
            break;
        }
        assert_eq!(head.status, 409, "busy while the cut request ends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(received > 0 && received <= 700_000, "received {received}");
    let received_usize = usize::try_from(received).unwrap();

    // A PATCH at the wrong offset is refused with the right one.
    let wrong = request(
        address,
        "PATCH",
        &ticket.url,
        &[headers[0], headers[1], ("Upload-Offset", "5")],
        &bytes[5..],
    )
    .await;
    assert_eq!(wrong.status, 409, "{}", wrong.text());
    assert_eq!(wrong.offset(), Some(received));

    // Nothing visible while incomplete.
    let early = get(
        address,
        &format!("/media/files/{chat}/{seq}"),
        Some("bob:phone"),
        &[],
    )
    .await;
    assert_eq!(early.status, 404);

    let at = received.to_string();
    let rest = request(
        address,
        "PATCH",
        &ticket.url,
        &[headers[0], headers[1], ("Upload-Offset", &at)],
        &bytes[received_usize..],
    )
    .await;
    assert_eq!(rest.status, 201, "{}", rest.text());
    let (_, update) = next_status(&mut bob).await;
    assert_eq!(update.status, MediaStatus::Ready);
    let whole = get(
        address,
        update.url.as_deref().unwrap(),
        Some("bob:phone"),
        &[],
    )
    .await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == bytes, "the resumed upload is byte-exact");
}

/// An upload that never completes fails when its ticket expires: every device hears
/// `failed`, the ticket is refused afterwards, history shows the entry failed.
#[tokio::test]
async fn an_upload_never_finished_fails_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--media-ticket-ttl-ms", "1500", "--media-sweep-ms", "100"],
    );
    let address = server.address;
    let mut alice = raw_authed(&server, "alice:phone").await;
    let mut bob = raw_authed(&server, "bob:phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let bytes = png(10_000);
    let (seq, ticket) = send_media(
        &mut alice,
        &chat,
        "m1",
        media_json("late.png", "image/png", &bytes, false),
    )
    .await;
    // Half of it arrives, then nothing.
    let half = request(
        address,
        "PUT",
        &ticket.url,
        &[
            ("Authorization", "Bearer alice:phone"),
            ("Upload-Ticket", &ticket.ticket),
        ],
        &bytes[..5_000],
    )
    .await;
    assert_eq!(half.status, 204, "{}", half.text());
    assert_eq!(half.offset(), Some(5_000));

    for device in [&mut alice, &mut bob] {
        let (_, update) = next_status(device).await;
        assert_eq!(update.media_seq, seq);
        assert_eq!(update.status, MediaStatus::Failed);
        assert_eq!(update.reason.as_deref(), Some("upload expired"));
    }
    let late = request(
        address,
        "PATCH",
        &ticket.url,
        &[
            ("Authorization", "Bearer alice:phone"),
            ("Upload-Ticket", &ticket.ticket),
            ("Upload-Offset", "5000"),
        ],
        &bytes[5_000..],
    )
    .await;
    assert_eq!(late.status, 410, "{}", late.text());
    let seen = get(
        address,
        &format!("/media/files/{chat}/{seq}"),
        Some("bob:phone"),
        &[],
    )
    .await;
    assert_eq!(seen.status, 404);

    send_json(
        &mut bob,
        serde_json::json!({"type": "history", "id": "h", "conversation": chat, "after": 0}),
    )
    .await;
    let history = loop {
        if let ServerFrame::History { messages, .. } = next_frame(&mut bob).await {
            break messages;
        }
    };
    let media = history
        .iter()
        .find(|m| m.seq == seq)
        .expect("the media entry");
    assert_eq!(media_of(media).status, MediaStatus::Failed);
}

/// The server is killed mid-upload: after the restart the upload resumes from what was
/// staged, and a second upload left unfinished still fails when its ticket expires (the
/// pending uploads are recorded on disk).
#[tokio::test]
async fn a_restart_mid_upload_resumes_and_still_expires() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--media-secret",
        SECRET,
        "--media-ticket-ttl-ms",
        "4000",
        "--media-sweep-ms",
        "100",
    ];
    let mut server = Server::start(dir.path(), &flags);
    let address = server.address;
    let mut alice = raw_authed(&server, "alice:phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let bytes = png(400_000);
    let (_, resumed) = send_media(
        &mut alice,
        &chat,
        "m1",
        media_json("one.png", "image/png", &bytes, true),
    )
    .await;
    let (abandoned_seq, abandoned) = send_media(
        &mut alice,
        &chat,
        "m2",
        media_json("two.png", "image/png", &bytes, true),
    )
    .await;
    let auth = [("Authorization", "Bearer alice:phone")];
    for ticket in [&resumed, &abandoned] {
        let half = request(
            address,
            "PUT",
            &ticket.url,
            &[auth[0], ("Upload-Ticket", &ticket.ticket)],
            &bytes[..100_000],
        )
        .await;
        assert_eq!(half.status, 204, "{}", half.text());
    }
    drop(alice);

    server.restart();
    assert_eq!(server.address, address);
    let head = offset(address, &resumed, "alice:phone").await;
    assert_eq!(head.status, 200, "{}", head.text());
    assert_eq!(head.offset(), Some(100_000), "the staged bytes survived");
    let rest = request(
        address,
        "PATCH",
        &resumed.url,
        &[
            auth[0],
            ("Upload-Ticket", &resumed.ticket),
            ("Upload-Offset", "100000"),
        ],
        &bytes[100_000..],
    )
    .await;
    assert_eq!(rest.status, 201, "{}", rest.text());

    // The abandoned one fails at its deadline although the process that issued it is gone.
    let mut bob = raw_authed(&server, "bob:phone").await;
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            let (_, update) = next_status(&mut bob).await;
            if update.media_seq == abandoned_seq {
                return update;
            }
        }
    })
    .await
    .expect("the abandoned upload fails after the restart");
    assert_eq!(failed.status, MediaStatus::Failed);
}
