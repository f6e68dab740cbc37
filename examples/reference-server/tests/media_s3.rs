//! End to end: media objects in a real S3-compatible server (moto, started by
//! `scripts/s3.sh`). Runs when `MESSENGER_TEST_S3_URL` names it and the binary has the `s3`
//! feature; otherwise prints why it skipped.

mod common;

use common::media::{
    get, media_of, next_message, next_status, open_direct, png, put, send_media, sha256_hex,
};
use common::{Server, raw_authed};
use messenger_core::MediaStatus;

fn s3_url() -> Option<String> {
    let Ok(url) = std::env::var("MESSENGER_TEST_S3_URL") else {
        println!(
            "SKIPPED: MESSENGER_TEST_S3_URL is not set (start scripts/s3.sh and export its URL)"
        );
        return None;
    };
    if !cfg!(feature = "s3") {
        println!("SKIPPED: reference-server was built without the `s3` feature");
        return None;
    }
    Some(url)
}

/// A multipart upload (two parts) lands in the bucket, not on local disk, and is served
/// whole and by range from there.
#[tokio::test]
async fn media_objects_live_in_s3() {
    let Some(url) = s3_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &["--media-store", &url],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let address = server.address;
    let mut alice = raw_authed(&server, "alice:phone").await;
    let mut bob = raw_authed(&server, "bob:phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let bytes = png(12 * 1024 * 1024 + 17);
    let media = serde_json::json!({"name": "big.png", "mime": "image/png", "size": bytes.len(), "sha256": sha256_hex(&bytes)});
    let (seq, ticket) = send_media(&mut alice, &chat, "s3-1", media).await;
    let pending = next_message(&mut bob).await;
    assert_eq!(media_of(&pending).status, MediaStatus::Pending);

    let done = put(address, &ticket, "alice:phone", &bytes).await;
    assert_eq!(done.status, 201, "{}", done.text());
    let (_, update) = next_status(&mut bob).await;
    assert_eq!(update.media_seq, seq);
    assert_eq!(update.status, MediaStatus::Ready);
    let url = update.url.unwrap();

    let whole = get(address, &url, Some("bob:phone"), &[]).await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.body.len(), bytes.len());
    assert!(whole.body == bytes, "the bytes came back from S3 intact");
    let part = get(
        address,
        &url,
        Some("bob:phone"),
        &[("Range", "bytes=9000000-9000099")],
    )
    .await;
    assert_eq!(part.status, 206);
    assert!(part.body == bytes[9_000_000..9_000_100]);

    // The object went to the bucket: nothing was written to the local object directory.
    assert!(
        !dir.path().join("media/objects").exists(),
        "no local objects with --media-store s3://"
    );
}
