//! Signed-token authentication (`JwtAuthenticator`, HS256 with issuer and audience). The
//! input, as text, is a token: refused cleanly (`Unauthorized`) unless signed with the
//! secret. The same bytes then drive claims signed with the secret, whose acceptance must be
//! exactly what `docs/protocol.md` and `JwtAuthenticator` document.
#![no_main]

use std::future::Ready;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Result, Unstructured};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use messenger_core::auth::{Authenticate, Identity};
use messenger_core::{DeviceId, Error, ErrorKind, UserId};
use messenger_socket::auth::JwtAuthenticator;
use serde_json::{Value, json};
use tower::Service;

/// The secret of the seed tokens (`fuzz/seeds/jwt/`).
const SECRET: &[u8] = b"fuzz-secret";
const ISSUER: &str = "chat";
const AUDIENCE: &str = "app";
/// `JwtAuthenticator`'s leeway on `exp`, in seconds.
const LEEWAY: u64 = 5;

fn authenticate(auth: &mut JwtAuthenticator, token: &str) -> std::result::Result<Identity, Error> {
    let future: Ready<_> = auth.call(Authenticate {
        token: Arc::from(token),
    });
    future.into_inner()
}

/// A claim value: often the one that is wanted, sometimes anything.
#[derive(Arbitrary, Debug)]
enum Claim<'a> {
    Absent,
    Good,
    Text(&'a str),
    Number(i64),
    List(Vec<&'a str>),
    ListWithGood(Vec<&'a str>),
}

impl Claim<'_> {
    fn value(&self, good: &str) -> Option<Value> {
        match self {
            Claim::Absent => None,
            Claim::Good => Some(json!(good)),
            Claim::Text(text) => Some(json!(text)),
            Claim::Number(number) => Some(json!(number)),
            Claim::List(list) => Some(json!(list)),
            Claim::ListWithGood(list) => {
                let mut list: Vec<&str> = list.clone();
                list.push(good);
                Some(json!(list))
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Expiry {
    Absent,
    Past(u32),
    Future(u32),
    Any(u64),
    Negative(i64),
    Float(f64),
}

#[derive(Arbitrary, Debug)]
struct Claims<'a> {
    sub: Claim<'a>,
    device: Claim<'a>,
    exp: Expiry,
    iss: Claim<'a>,
    aud: Claim<'a>,
    nbf: Option<u64>,
    extra: Option<(&'a str, &'a str)>,
}

fn signed_claims(u: &mut Unstructured<'_>, now: u64) -> Result<()> {
    let claims = Claims::arbitrary(u)?;
    let mut object = serde_json::Map::new();
    if let Some((name, value)) = claims.extra {
        object.insert(name.to_owned(), json!(value));
    }
    for (name, claim, good) in [
        ("sub", &claims.sub, "alice"),
        ("device", &claims.device, "phone"),
        ("iss", &claims.iss, ISSUER),
        ("aud", &claims.aud, AUDIENCE),
    ] {
        match claim.value(good) {
            Some(value) => object.insert(name.to_owned(), value),
            None => object.remove(name),
        };
    }
    let exp = match claims.exp {
        Expiry::Absent => None,
        Expiry::Past(ago) => Some(json!(now.saturating_sub(60 + u64::from(ago)))),
        Expiry::Future(ahead) => Some(json!(now + 60 + u64::from(ahead))),
        Expiry::Any(exp) => Some(json!(exp)),
        Expiry::Negative(exp) => Some(json!(exp)),
        Expiry::Float(exp) => Some(json!(exp)),
    };
    match exp {
        Some(exp) => object.insert("exp".to_owned(), exp),
        None => object.remove("exp"),
    };
    if let Some(nbf) = claims.nbf {
        object.insert("nbf".to_owned(), json!(nbf));
    }
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(object.clone()),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("claims sign");

    // What the authenticator documents: `sub` a user id, `device` a device id, `exp` a
    // number of seconds not past (with the leeway), and with an issuer and audience
    // configured, `iss` and `aud` (one or a list) naming them. Without an audience
    // configured, a token must carry no `aud` (jsonwebtoken refuses one it does not expect).
    let text = |name: &str| object.get(name).and_then(Value::as_str);
    let exp = object.get("exp").and_then(Value::as_u64);
    if exp.is_some_and(|exp| exp.abs_diff(now) <= 2 * LEEWAY) {
        return Ok(()); // Too close to the clock to tell.
    }
    let base = text("sub").is_some_and(|sub| UserId::new(sub).is_ok())
        && text("device").is_some_and(|device| DeviceId::new(device).is_ok())
        && exp.is_some_and(|exp| exp.saturating_add(LEEWAY) >= now);
    // One string, or a list of strings (jsonwebtoken reads either; anything else does not
    // parse, and is then missing).
    let strings = |name: &str| -> Option<Vec<&str>> {
        match object.get(name)? {
            Value::String(value) => Some(vec![value.as_str()]),
            Value::Array(values) => values.iter().map(Value::as_str).collect(),
            _ => None,
        }
    };
    let names = |name: &str, good: &str| strings(name).is_some_and(|values| values.contains(&good));
    let plain_ok = base && strings("aud").is_none();
    let strict_ok = base && names("iss", ISSUER) && names("aud", AUDIENCE);

    let mut plain = JwtAuthenticator::hs256(SECRET);
    let mut strict = JwtAuthenticator::hs256(SECRET)
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    for (what, auth, expected) in [
        ("plain", &mut plain, plain_ok),
        ("with issuer and audience", &mut strict, strict_ok),
    ] {
        match authenticate(auth, &token) {
            Ok(identity) => {
                assert!(expected, "{what} accepted {object:?}");
                assert_eq!(Some(identity.user.as_str()), text("sub"));
                assert_eq!(Some(identity.device.as_str()), text("device"));
                let expires = identity.expires_at.expect("an expiry").as_millis();
                assert_eq!(expires, exp.expect("exp").saturating_mul(1000));
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
                assert!(!expected, "{what} refused {object:?}: {err}");
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    if let Ok(token) = std::str::from_utf8(data) {
        let mut strict = JwtAuthenticator::hs256(SECRET)
            .with_issuer(ISSUER)
            .with_audience(AUDIENCE);
        let mut plain = JwtAuthenticator::hs256(b"another secret");
        for auth in [&mut strict, &mut plain] {
            if let Err(err) = authenticate(auth, token) {
                assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
            }
        }
    }
    let _ = signed_claims(&mut Unstructured::new(data), now);
});
