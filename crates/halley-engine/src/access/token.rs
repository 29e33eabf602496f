//! JWT verification (and HS256 minting for development), on `jsonwebtoken` with the pure-Rust
//! crypto provider.
//!
//! The algorithm is chosen by the keys configured, never by the token: the header's `alg` must
//! be the algorithm of one configured key, and the token is checked with that key only. So
//! `alg: none` is refused, and so is an HS256 token when only an RSA key is configured (the
//! "key confusion" attack, signing HS256 with the public key as the secret).
//!
//! Times (`exp`, `nbf`) are checked here against [`super::Policy::now`], not by
//! `jsonwebtoken` (which reads the system clock), so that tests can move the clock.

use std::borrow::Cow;
use std::collections::HashSet;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AccessError, Denied, TokenConfig};

/// Seconds of clock difference tolerated between whoever mints tokens and this server, on
/// `exp` and `nbf`. Small: an application that mints a token with `nbf = now` on a clock a
/// second ahead of ours should not see it refused, but an expired token should not live on.
pub const CLOCK_LEEWAY_SECS: u64 = 5;

/// Longest token accepted, in bytes. A token is read once per connection, but before its
/// signature is checked it is attacker-controlled input to base64 and JSON; 8 KiB is far more
/// than any set of claims Halley reads (and than most proxies allow in a header).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The keys configured, each with the validation for its algorithm.
pub(crate) struct Verifier {
    hs256: Option<(DecodingKey, Validation)>,
    rs256: Option<(DecodingKey, Validation)>,
    es256: Option<(DecodingKey, Validation)>,
    /// For [`super::Policy::mint`].
    hs256_signing: Option<EncodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

/// The claims Halley reads. Times as JSON numbers (an integer or not: NumericDate allows
/// fractions).
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    pub sub: Option<String>,
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    pub info: Option<serde_json::Value>,
}

/// What [`super::Policy::mint`] writes.
#[derive(Debug, Serialize)]
pub(crate) struct MintedClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub channels: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub publish: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a serde_json::Value>,
}

fn unauthenticated(why: &'static str) -> Denied {
    Denied::Unauthenticated(Cow::Borrowed(why))
}

/// The algorithm in a token's header, read before anything is trusted.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
}

impl Verifier {
    pub(crate) fn new(config: &TokenConfig) -> Result<Option<Verifier>, AccessError> {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            // exp and nbf are checked by the caller against Policy::now.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.required_spec_claims = HashSet::new();
            v.validate_aud = config.audience.is_some();
            if let Some(aud) = &config.audience {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".to_owned());
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
                v.required_spec_claims.insert("iss".to_owned());
            }
            v
        };
        let hs256 = match &config.hs256_secret {
            Some(secret) if secret.is_empty() => return Err(AccessError::EmptySecret),
            Some(secret) => Some((
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| AccessError::BadSecret(e.to_string()))?,
                validation(Algorithm::HS256),
            )),
            None => None,
        };
        let hs256_signing = match &config.hs256_secret {
            Some(secret) => Some(
                EncodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| AccessError::BadSecret(e.to_string()))?,
            ),
            None => None,
        };
        let rs256 = match &config.rs256_public_key {
            Some(pem) => Some((
                DecodingKey::from_rsa_pem(pem).map_err(|e| AccessError::BadPem {
                    key: "rs256-public-key",
                    reason: e.to_string(),
                })?,
                validation(Algorithm::RS256),
            )),
            None => None,
        };
        let es256 = match &config.es256_public_key {
            Some(pem) => Some((
                DecodingKey::from_ec_pem(pem).map_err(|e| AccessError::BadPem {
                    key: "es256-public-key",
                    reason: e.to_string(),
                })?,
                validation(Algorithm::ES256),
            )),
            None => None,
        };
        if hs256.is_none() && rs256.is_none() && es256.is_none() {
            return Ok(None);
        }
        Ok(Some(Verifier {
            hs256,
            rs256,
            es256,
            hs256_signing,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
        }))
    }

    /// Checks the signature and the claims that do not depend on time; the caller checks the
    /// times and revocation.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, Denied> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(unauthenticated("malformed token"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauthenticated("malformed token"));
        };
        let alg = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RawHeader>(&bytes).ok())
            .ok_or_else(|| unauthenticated("malformed token"))?
            .alg;
        let key = match alg.as_str() {
            "HS256" => self.hs256.as_ref(),
            "RS256" => self.rs256.as_ref(),
            "ES256" => self.es256.as_ref(),
            none if none.eq_ignore_ascii_case("none") => {
                return Err(unauthenticated("token algorithm none is not accepted"));
            }
            _ => None,
        };
        let Some((key, validation)) = key else {
            // Quoting the header is safe: it parsed as JSON, and the name is cut short.
            let alg: String = alg.chars().take(16).collect();
            return Err(Denied::Unauthenticated(Cow::Owned(format!(
                "token algorithm {alg} is not accepted here"
            ))));
        };
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|e| {
                unauthenticated(match e.kind() {
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    ErrorKind::InvalidAudience => "token audience is wrong",
                    ErrorKind::InvalidIssuer => "token issuer is wrong",
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                        "token audience is wrong"
                    }
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                        "token issuer is wrong"
                    }
                    ErrorKind::InvalidAlgorithm => "token algorithm is not accepted here",
                    _ => "malformed token",
                })
            })
    }

    /// An HS256 token with these claims, `aud` and `iss` as configured.
    pub(crate) fn mint<'a>(&'a self, mut claims: MintedClaims<'a>) -> Result<String, AccessError> {
        let key = self.hs256_signing.as_ref().ok_or(AccessError::NoSecret)?;
        claims.aud = self.audience.as_deref();
        claims.iss = self.issuer.as_deref();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AccessError::Mint(e.to_string()))
    }
}

/// A NumericDate as whole Unix seconds; negative or absurd values are malformed.
pub(crate) fn seconds(value: Option<f64>) -> Result<Option<u64>, Denied> {
    match value {
        None => Ok(None),
        Some(v) if (0.0..1e15).contains(&v) => Ok(Some(v as u64)),
        Some(_) => Err(unauthenticated("malformed token")),
    }
}
