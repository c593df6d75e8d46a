//! JWT verification. The algorithm is fixed by the kind of key configured, never taken from the
//! token: HS256 for a shared secret, RS256/ES256 (or the JWKS key's own algorithm) for public
//! keys. That closes `alg: none` and HS/RS confusion (a token "signed" with the public key as an
//! HMAC secret). `exp` is required; `nbf`, `iss` and `aud` are checked (the last two when
//! configured).

use crate::config::{AuthConfig, Problem};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Clock skew tolerated for `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// How often the JWKS file's modification time is checked.
const JWKS_POLL: Duration = Duration::from_secs(2);

/// Why the configured key(s) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Config(#[from] Problem),
    #[error("auth.mode = \"jwt\" needs jwt_secret_env, jwt_public_key or jwks_file")]
    NoKey,
    #[error("auth.jwt_public_key {}: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("auth.jwks_file {}: {message}", path.display())]
    Jwks { path: PathBuf, message: String },
}

/// Why a token is refused: a sentence for the client (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// A verified token's claims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The `sub` claim, when it is a string.
    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks tokens against the configured key(s).
pub struct Verifier {
    keys: RwLock<Arc<Vec<Key>>>,
    jwks: Option<(PathBuf, RwLock<Option<SystemTime>>)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Verifier {
    /// The verifier for `auth.mode = "jwt"`; errors say which key setting is wrong.
    pub fn from_config(auth: &AuthConfig) -> Result<Verifier, KeyError> {
        let (keys, jwks) = if let Some(secret) = auth.secret()? {
            let key = Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            };
            (vec![key], None)
        } else if let Some(path) = &auth.jwt_public_key {
            (vec![pem_key(path)?], None)
        } else if let Some(path) = &auth.jwks_file {
            let keys = jwks_keys(path)?;
            (keys, Some((path.clone(), RwLock::new(modified(path)))))
        } else {
            return Err(KeyError::NoKey);
        };
        Ok(Verifier {
            keys: RwLock::new(Arc::new(keys)),
            jwks,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        })
    }

    /// Verifies `token`; the error is a sentence for the client (never the token itself).
    pub fn verify(&self, token: &str) -> Result<Claims, Rejected> {
        self.check(token).map_err(Rejected)
    }

    fn check(&self, token: &str) -> Result<Claims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => {
                "the token's header is not valid or names an unsupported algorithm (alg \"none\" is never accepted)".to_string()
            }
            _ => format!("malformed token: {e}"),
        })?;
        let keys = self.keys.read().map(|k| k.clone()).unwrap_or_default();
        let key = keys
            .iter()
            .find(|k| k.kid.is_some() && k.kid == header.kid)
            .or_else(|| match keys.as_slice() {
                // One key: tokens without kid, and any token when the key has no kid (secret, PEM).
                [only] if header.kid.is_none() || only.kid.is_none() => Some(only),
                _ => None,
            })
            .ok_or_else(|| match &header.kid {
                Some(kid) => format!("no configured key has kid {kid:?}"),
                None => "the token names no kid and several keys are configured".to_string(),
            })?;
        if header.alg != key.algorithm {
            return Err(format!(
                "the token is signed with {:?} but this relay accepts only {:?} for its key",
                header.alg, key.algorithm
            ));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| describe(&e))?;
        Ok(Claims(data.claims))
    }

    /// Re-reads the JWKS file (no-op for a secret or a PEM key). On error the old keys stay.
    pub fn reload(&self) -> Result<(), KeyError> {
        let Some((path, stamp)) = &self.jwks else {
            return Ok(());
        };
        let seen = modified(path);
        let keys = jwks_keys(path)?;
        let count = keys.len();
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::new(keys);
        }
        if let Ok(mut stamp) = stamp.write() {
            *stamp = seen;
        }
        tracing::info!(file = %path.display(), keys = count, "JWKS reloaded");
        Ok(())
    }

    /// Reloads the JWKS file when it changes or on SIGHUP, until `shutdown`.
    pub fn spawn_reloader(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let Some((path, _)) = &self.jwks else {
            return;
        };
        let path = path.clone();
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let by_signal = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(JWKS_POLL) => false,
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let changed = match &self.jwks {
                    Some((_, stamp)) => stamp.read().map(|s| *s != modified(&path)).unwrap_or(true),
                    None => false,
                };
                if by_signal || changed {
                    if let Err(e) = self.reload() {
                        tracing::error!(error = %e, "could not reload the JWKS file; keeping the previous keys");
                        // Do not retry a broken file every poll: wait for the next change.
                        if let Some((_, stamp)) = &self.jwks {
                            if let Ok(mut stamp) = stamp.write() {
                                *stamp = modified(&path);
                            }
                        }
                    }
                }
            }
        });
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".into(),
        _ => format!("invalid token: {e}"),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A PEM public key: RSA → RS256, EC (P-256) → ES256.
fn pem_key(path: &Path) -> Result<Key, KeyError> {
    let error = |message: String| KeyError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let (key, algorithm) = match DecodingKey::from_rsa_pem(&pem) {
        Ok(key) => (key, Algorithm::RS256),
        Err(_) => match DecodingKey::from_ec_pem(&pem) {
            Ok(key) => (key, Algorithm::ES256),
            Err(e) => {
                return Err(error(format!(
                    "not an RSA or EC public key in PEM form ({e})"
                )))
            }
        },
    };
    Ok(Key {
        kid: None,
        algorithm,
        key,
    })
}

/// The asymmetric keys of a JWKS file. Symmetric (`oct`) keys are refused: a JWKS is public.
fn jwks_keys(path: &Path) -> Result<Vec<Key>, KeyError> {
    let error = |message: String| KeyError::Jwks {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|e| error(format!("not a JWKS document ({e})")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let declared = jwk.common.key_algorithm;
        let algorithm = match (&jwk.algorithm, declared) {
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Algorithm::RS384,
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Algorithm::RS512,
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Algorithm::PS256,
            (AlgorithmParameters::RSA(_), _) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), _) if p.curve == EllipticCurve::P384 => {
                Algorithm::ES384
            }
            (AlgorithmParameters::EllipticCurve(_), _) => Algorithm::ES256,
            (AlgorithmParameters::OctetKeyPair(_), _) => Algorithm::EdDSA,
            (AlgorithmParameters::OctetKey(_), _) => {
                tracing::warn!(kid = ?jwk.common.key_id, "ignoring a symmetric (oct) key in the JWKS file");
                continue;
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| error(format!("key {:?}: {e}", jwk.common.key_id)))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(error("no usable RSA or EC key".into()));
    }
    Ok(keys)
}
