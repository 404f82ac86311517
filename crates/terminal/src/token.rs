//! Terminal tokens: everything a browser needs, and nothing else. HMAC-SHA256 over
//! `v1|terminal|machine|role|expiry` with a per-instance secret kept in the store, so
//! tokens stay valid across a gateway restart and a terminal can be re-found from its
//! token alone.

use crate::GatewayError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a token holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Types into the terminal.
    Owner,
    /// Sees the same screen live, cannot type or resize.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Viewer => "viewer",
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub terminal: String,
    pub machine: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(payload);
        mac
    }

    pub fn sign(&self, c: &Claims) -> String {
        let payload = format!(
            "v1|{}|{}|{}|{}",
            c.terminal,
            c.machine,
            c.role.as_str(),
            c.expires_at
        );
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// Checks signature, shape, terminal and expiry (`now` in Unix seconds).
    pub fn verify(&self, token: &str, terminal: &str, now: i64) -> Result<Claims, GatewayError> {
        let invalid = || GatewayError::TokenInvalid(terminal.to_string());
        let (p, t) = token.split_once('.').ok_or_else(invalid)?;
        let payload = B64.decode(p).map_err(|_| invalid())?;
        let tag = B64.decode(t).map_err(|_| invalid())?;
        // Constant-time comparison: a forged token learns nothing from timing.
        self.mac(&payload)
            .verify_slice(&tag)
            .map_err(|_| invalid())?;
        let payload = String::from_utf8(payload).map_err(|_| invalid())?;
        let parts: Vec<&str> = payload.split('|').collect();
        let [v, term, machine, role, exp] = parts[..] else {
            return Err(invalid());
        };
        let role = match role {
            "owner" => Role::Owner,
            "viewer" => Role::Viewer,
            _ => return Err(invalid()),
        };
        if v != "v1" || term != terminal || !is_id(term) || !is_id(machine) {
            return Err(invalid());
        }
        let expires_at: i64 = exp.parse().map_err(|_| invalid())?;
        if expires_at < now {
            return Err(GatewayError::TokenExpired(terminal.to_string()));
        }
        Ok(Claims {
            terminal: term.to_string(),
            machine: machine.to_string(),
            role,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, exp: i64) -> Claims {
        Claims {
            terminal: "t-abc".into(),
            machine: "m-xyz".into(),
            role,
            expires_at: exp,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let s = Signer::new(b"secret");
        let tok = s.sign(&claims(Role::Viewer, 100));
        assert_eq!(
            s.verify(&tok, "t-abc", 50).unwrap(),
            claims(Role::Viewer, 100)
        );
        // Expired.
        assert!(matches!(
            s.verify(&tok, "t-abc", 101),
            Err(GatewayError::TokenExpired(_))
        ));
        // Bound to its terminal.
        assert!(matches!(
            s.verify(&tok, "t-other", 50),
            Err(GatewayError::TokenInvalid(_))
        ));
        // Another instance's secret.
        assert!(Signer::new(b"other").verify(&tok, "t-abc", 50).is_err());
        // A viewer cannot turn itself into an owner by editing the payload.
        let (_, tag) = tok.split_once('.').unwrap();
        let forged = format!("{}.{tag}", B64.encode("v1|t-abc|m-xyz|owner|100"));
        assert!(s.verify(&forged, "t-abc", 50).is_err());
        assert!(s.verify("garbage", "t-abc", 50).is_err());
    }
}
