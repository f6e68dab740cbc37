//! Authenticators: turn the token of a `hello` frame into a user and a device.
//!
//! Both are [`tower::Service`]s of [`Authenticate`], so an integrator can wrap them (timeout,
//! cache) or replace them with their own.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use messenger_core::auth::{Authenticate, Identity};
use messenger_core::{DeviceId, Error, ErrorKind, Timestamp, UserId};
use serde::Deserialize;

/// Development authentication: the token is `user:device` and is trusted as is.
///
/// Never use it where the socket is reachable by untrusted clients.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevAuthenticator;

impl DevAuthenticator {
    fn check(token: &str) -> Result<Identity, Error> {
        let (user, device) = token.split_once(':').ok_or_else(|| {
            Error::new(ErrorKind::Unauthorized, "dev token must be `user:device`")
        })?;
        let user = UserId::new(user)
            .map_err(|err| Error::new(ErrorKind::Unauthorized, err.to_string()))?;
        let device = DeviceId::new(device)
            .map_err(|err| Error::new(ErrorKind::Unauthorized, err.to_string()))?;
        Ok(Identity {
            user,
            device,
            expires_at: None,
        })
    }
}

impl tower::Service<Authenticate> for DevAuthenticator {
    type Response = Identity;
    type Error = Error;
    type Future = Ready<Result<Identity, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Authenticate) -> Self::Future {
        ready(Self::check(&request.token))
    }
}

/// Signed-token authentication: an HS256 JSON Web Token with the claims `sub` (user id),
/// `device` (device id) and `exp` (expiry, seconds since the epoch; required).
#[derive(Clone)]
pub struct JwtAuthenticator {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("key", &"<redacted>")
            .field("validation", &self.validation)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    device: String,
    exp: u64,
}

impl JwtAuthenticator {
    /// Verifies HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            key: Arc::new(DecodingKey::from_secret(secret)),
            validation: Arc::new(validation),
        }
    }

    /// Also requires the `iss` claim, and requires it to be `issuer`: a token without `iss`
    /// is refused.
    #[must_use]
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        let validation = Arc::make_mut(&mut self.validation);
        validation.set_issuer(&[issuer]);
        // jsonwebtoken checks `iss` only when the token has one: make it required.
        require_claim(validation, "iss");
        self
    }

    /// Also requires the `aud` claim, and requires it to contain `audience`: a token without
    /// `aud` is refused.
    #[must_use]
    pub fn with_audience(mut self, audience: &str) -> Self {
        let validation = Arc::make_mut(&mut self.validation);
        validation.set_audience(&[audience]);
        // jsonwebtoken checks `aud` only when the token has one: make it required.
        require_claim(validation, "aud");
        self
    }

    fn check(&self, token: &str) -> Result<Identity, Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|err| Error::new(ErrorKind::Unauthorized, format!("bad token: {err}")))?;
        let claims = data.claims;
        let user = UserId::new(&claims.sub)
            .map_err(|err| Error::new(ErrorKind::Unauthorized, err.to_string()))?;
        let device = DeviceId::new(&claims.device)
            .map_err(|err| Error::new(ErrorKind::Unauthorized, err.to_string()))?;
        Ok(Identity {
            user,
            device,
            expires_at: Some(Timestamp(claims.exp.saturating_mul(1000))),
        })
    }
}

/// Adds `claim` to the claims a token must carry, keeping the ones required already.
fn require_claim(validation: &mut Validation, claim: &str) {
    let mut required: Vec<String> = validation.required_spec_claims.iter().cloned().collect();
    if !required.iter().any(|name| name == claim) {
        required.push(claim.to_owned());
    }
    validation.set_required_spec_claims(&required);
}

impl tower::Service<Authenticate> for JwtAuthenticator {
    type Response = Identity;
    type Error = Error;
    type Future = Ready<Result<Identity, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Authenticate) -> Self::Future {
        ready(self.check(&request.token))
    }
}

/// Either authenticator, chosen at run time (the reference server's `--auth` flag).
#[derive(Debug, Clone)]
pub enum AnyAuthenticator {
    /// `user:device` tokens.
    Dev(DevAuthenticator),
    /// Signed tokens.
    Jwt(JwtAuthenticator),
}

impl tower::Service<Authenticate> for AnyAuthenticator {
    type Response = Identity;
    type Error = Error;
    type Future = Ready<Result<Identity, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Authenticate) -> Self::Future {
        match self {
            AnyAuthenticator::Dev(_) => ready(DevAuthenticator::check(&request.token)),
            AnyAuthenticator::Jwt(jwt) => ready(jwt.check(&request.token)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use tower::ServiceExt;

    fn token(secret: &[u8], exp: u64) -> String {
        let claims = serde_json::json!({"sub": "alice", "device": "phone", "exp": exp});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn signed(secret: &[u8], claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now_secs() -> u64 {
        Timestamp::now().as_millis() / 1000
    }

    async fn auth<S: tower::Service<Authenticate, Response = Identity, Error = Error>>(
        service: S,
        token: &str,
    ) -> Result<Identity, Error> {
        service
            .oneshot(Authenticate {
                token: Arc::from(token),
            })
            .await
    }

    #[tokio::test]
    async fn dev_tokens() {
        let identity = auth(DevAuthenticator, "alice:phone").await.unwrap();
        assert_eq!(identity.user.as_str(), "alice");
        assert_eq!(identity.device.as_str(), "phone");
        for bad in ["alice", "", ":phone", "al ice:phone", "a:b:c"] {
            let err = auth(DevAuthenticator, bad).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthorized, "{bad}");
        }
    }

    #[tokio::test]
    async fn jwt_tokens() {
        let jwt = JwtAuthenticator::hs256(b"secret");
        let good = token(b"secret", now_secs() + 60);
        let identity = auth(jwt.clone(), &good).await.unwrap();
        assert_eq!(identity.user.as_str(), "alice");
        assert!(identity.expires_at.is_some());

        let forged = token(b"other", now_secs() + 60);
        assert_eq!(
            auth(jwt.clone(), &forged).await.unwrap_err().kind(),
            ErrorKind::Unauthorized
        );
        let expired = token(b"secret", now_secs() - 3600);
        assert_eq!(
            auth(jwt.clone(), &expired).await.unwrap_err().kind(),
            ErrorKind::Unauthorized
        );
        assert_eq!(
            auth(jwt, "garbage").await.unwrap_err().kind(),
            ErrorKind::Unauthorized
        );
    }

    /// A configured issuer or audience is required: a token without the claim is refused
    /// like a token with a wrong one.
    #[tokio::test]
    async fn configured_issuer_and_audience_are_required() {
        let jwt = JwtAuthenticator::hs256(b"secret")
            .with_issuer("chat")
            .with_audience("app");
        let exp = now_secs() + 60;
        let both = serde_json::json!({"sub": "alice", "device": "phone", "exp": exp,
                                      "iss": "chat", "aud": "app"});
        let identity = auth(jwt.clone(), &signed(b"secret", &both)).await.unwrap();
        assert_eq!(identity.user.as_str(), "alice");

        for (case, claims) in [
            (
                "no iss",
                serde_json::json!({"sub": "alice", "device": "phone", "exp": exp, "aud": "app"}),
            ),
            (
                "no aud",
                serde_json::json!({"sub": "alice", "device": "phone", "exp": exp, "iss": "chat"}),
            ),
            (
                "neither",
                serde_json::json!({"sub": "alice", "device": "phone", "exp": exp}),
            ),
            (
                "wrong iss",
                serde_json::json!({"sub": "alice", "device": "phone", "exp": exp,
                                   "iss": "other", "aud": "app"}),
            ),
            (
                "wrong aud",
                serde_json::json!({"sub": "alice", "device": "phone", "exp": exp,
                                   "iss": "chat", "aud": "other"}),
            ),
        ] {
            let err = auth(jwt.clone(), &signed(b"secret", &claims))
                .await
                .expect_err(case);
            assert_eq!(err.kind(), ErrorKind::Unauthorized, "{case}");
        }

        // Without a configured issuer or audience, neither claim is needed.
        let plain = serde_json::json!({"sub": "alice", "device": "phone", "exp": exp});
        auth(
            JwtAuthenticator::hs256(b"secret"),
            &signed(b"secret", &plain),
        )
        .await
        .unwrap();
    }
}
