//! Who is asking: learners (anonymous browser sessions or learners named by an integrating
//! LMS through a signed link) and operators (signed in with an API key). Everything is an
//! HMAC-SHA256 over a purpose-tagged payload with the instance's web secret, so a token made
//! for one purpose is never accepted for another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Signs and verifies the web UI's tokens.
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

/// What a signed link grants: `learner` may do `exercise` until `expires_at` (unix s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    #[serde(rename = "l")]
    pub learner: String,
    #[serde(rename = "e")]
    pub exercise: String,
    #[serde(rename = "x")]
    pub expires_at: i64,
}

/// Learner ids the LMS may name: letters, digits and `_@.:-`, at most 100 bytes.
pub fn valid_learner(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@.:-".contains(&b))
}

/// A new anonymous learner's id, for a browser that has no session yet.
pub fn anonymous_learner() -> String {
    format!("anon-{}", rnr_core::random_id(16))
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, purpose: &str, payload: &str) -> String {
        // Any key length is valid for HMAC.
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(purpose.as_bytes());
        m.update(b"\0");
        m.update(payload.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    fn check(&self, purpose: &str, payload: &str, mac: &str) -> bool {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(purpose.as_bytes());
        m.update(b"\0");
        m.update(payload.as_bytes());
        hex::decode(mac).is_ok_and(|mac| m.verify_slice(&mac).is_ok())
    }

    /// `<learner>.<mac>`: the learner's identity for the learner API.
    pub fn learner_token(&self, learner: &str) -> String {
        format!("{learner}.{}", self.mac("learner", learner))
    }

    pub fn verify_learner(&self, token: &str) -> Option<String> {
        let (learner, mac) = token.rsplit_once('.')?;
        (valid_learner(learner) && self.check("learner", learner, mac)).then(|| learner.into())
    }

    /// `<base64url(json claims)>.<mac>`
    pub fn link_token(&self, claims: &LinkClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mac = self.mac("link", &payload);
        format!("{payload}.{mac}")
    }

    /// The link's claims if it is genuine; expiry is the caller's to judge.
    pub fn verify_link(&self, token: &str) -> Option<LinkClaims> {
        let (payload, mac) = token.split_once('.')?;
        if !self.check("link", payload, mac) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// `<key id>.<expires_at>.<mac>`: an operator's session cookie.
    pub fn operator_token(&self, key_id: &str, expires_at: i64) -> String {
        let payload = format!("{key_id}.{expires_at}");
        let mac = self.mac("operator", &payload);
        format!("{payload}.{mac}")
    }

    /// The key id of a genuine, unexpired operator token.
    pub fn verify_operator(&self, token: &str, now: i64) -> Option<String> {
        let (payload, mac) = token.rsplit_once('.')?;
        let (key_id, exp) = payload.split_once('.')?;
        let exp: i64 = exp.parse().ok()?;
        (exp > now && self.check("operator", payload, mac)).then(|| key_id.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_purpose_and_key() {
        let s = Signer::new(b"k1");
        let other = Signer::new(b"k2");
        let t = s.learner_token("anon-abc");
        assert_eq!(s.verify_learner(&t).as_deref(), Some("anon-abc"));
        assert_eq!(other.verify_learner(&t), None);
        assert_eq!(s.verify_learner(&t.replace("anon-abc", "anon-abd")), None);
        assert_eq!(s.verify_learner("anon-abc"), None);

        let c = LinkClaims {
            learner: "lms:42".into(),
            exercise: "cron".into(),
            expires_at: 100,
        };
        let l = s.link_token(&c);
        assert_eq!(s.verify_link(&l), Some(c));
        assert_eq!(other.verify_link(&l), None);
        // A link is not a learner token and vice versa.
        assert_eq!(s.verify_learner(&l), None);
        assert_eq!(s.verify_link(&t), None);

        let o = s.operator_token("k-1", 50);
        assert_eq!(s.verify_operator(&o, 49).as_deref(), Some("k-1"));
        assert_eq!(s.verify_operator(&o, 50), None, "expired");
        assert_eq!(other.verify_operator(&o, 0), None);
    }

    #[test]
    fn learner_ids_are_restricted() {
        assert!(valid_learner("lms:alice@example.org"));
        assert!(!valid_learner(""));
        assert!(!valid_learner("a b"));
        assert!(!valid_learner("<script>"));
        assert!(!valid_learner(&"x".repeat(101)));
    }
}
