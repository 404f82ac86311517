//! Who is asking: learners (anonymous browser sessions or learners named by an integrating
//! LMS through a signed link) and operators (signed in with an API key). Everything is an
//! HMAC-SHA256 over a purpose-tagged payload with the instance's web secret, so a token made
//! for one purpose is never accepted for another.
//!
//! A learner's page holds a learner token: one learner, one exercise, an expiry, and the
//! API key whose link it came from, if any. It opens, checks and reaches only that
//! exercise's machine. An anonymous browser is recognised by a visitor cookie, which only
//! names the learner (and expires); it is no credential for the learner API.

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
    /// The API key that made the link: its learners' machines count against its quotas,
    /// and revoking it ends the link.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a learner token says: `learner` may work on `exercise` until `expires_at`
/// (unix s). Refreshed tokens never outlive `until` (the link's or the visitor cookie's
/// expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnerClaims {
    #[serde(rename = "l")]
    pub learner: String,
    #[serde(rename = "e")]
    pub exercise: String,
    #[serde(rename = "x")]
    pub expires_at: i64,
    #[serde(rename = "u")]
    pub until: i64,
    /// The API key whose link the learner came through.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl LearnerClaims {
    /// Whether the learner is an anonymous visitor (no LMS named them).
    pub fn anonymous(&self) -> bool {
        self.learner.starts_with(ANONYMOUS_PREFIX)
    }
}

/// The owner prefix of anonymous learners' machines.
pub const ANONYMOUS_PREFIX: &str = "anon-";

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
    format!("{ANONYMOUS_PREFIX}{}", rnr_core::random_id(16))
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
        // Lowercase only, as `mac` writes it: hex::decode takes either case, which made
        // every token one of many spellings that all verify.
        let canonical = mac.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        canonical && hex::decode(mac).is_ok_and(|mac| m.verify_slice(&mac).is_ok())
    }

    /// `<base64url(json)>.<mac>` for `purpose`.
    fn sign_json<T: Serialize>(&self, purpose: &str, claims: &T) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mac = self.mac(purpose, &payload);
        format!("{payload}.{mac}")
    }

    fn verify_json<T: serde::de::DeserializeOwned>(&self, purpose: &str, token: &str) -> Option<T> {
        let (payload, mac) = token.split_once('.')?;
        if !self.check(purpose, payload, mac) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// The learner page's token for the learner API.
    pub fn learner_token(&self, claims: &LearnerClaims) -> String {
        self.sign_json("learner", claims)
    }

    /// The claims of a genuine learner token; expiry is the caller's to judge.
    pub fn verify_learner(&self, token: &str) -> Option<LearnerClaims> {
        self.verify_json::<LearnerClaims>("learner", token)
            .filter(|c| valid_learner(&c.learner))
    }

    /// `<learner>.<expires_at>.<mac>`: the anonymous visitor cookie.
    pub fn visitor_token(&self, learner: &str, expires_at: i64) -> String {
        let payload = format!("{learner}.{expires_at}");
        let mac = self.mac("visitor", &payload);
        format!("{payload}.{mac}")
    }

    /// The learner and expiry of a genuine, unexpired visitor cookie.
    pub fn verify_visitor(&self, token: &str, now: i64) -> Option<(String, i64)> {
        let (payload, mac) = token.rsplit_once('.')?;
        let (learner, exp) = payload.rsplit_once('.')?;
        let exp: i64 = exp.parse().ok()?;
        (exp > now && valid_learner(learner) && self.check("visitor", payload, mac))
            .then(|| (learner.to_string(), exp))
    }

    /// `<base64url(json claims)>.<mac>`
    pub fn link_token(&self, claims: &LinkClaims) -> String {
        self.sign_json("link", claims)
    }

    /// The link's claims if it is genuine; expiry is the caller's to judge.
    pub fn verify_link(&self, token: &str) -> Option<LinkClaims> {
        self.verify_json("link", token)
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
        let (key_id, exp) = payload.rsplit_once('.')?;
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
        let lc = LearnerClaims {
            learner: "anon-abc".into(),
            exercise: "cron".into(),
            expires_at: 100,
            until: 200,
            key: None,
        };
        let t = s.learner_token(&lc);
        assert_eq!(s.verify_learner(&t), Some(lc.clone()));
        assert!(lc.anonymous());
        assert_eq!(other.verify_learner(&t), None);
        let (payload, mac) = t.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&LearnerClaims {
                exercise: "archives".into(),
                ..lc.clone()
            })
            .unwrap(),
        );
        assert_eq!(
            s.verify_learner(&format!("{forged}.{mac}")),
            None,
            "{payload}"
        );
        assert_eq!(s.verify_learner("anon-abc"), None);

        let v = s.visitor_token("anon-abc", 50);
        assert_eq!(s.verify_visitor(&v, 49), Some(("anon-abc".into(), 50)));
        assert_eq!(s.verify_visitor(&v, 50), None, "expired");
        assert_eq!(other.verify_visitor(&v, 0), None);
        // A visitor cookie is no learner token, and the reverse.
        assert_eq!(s.verify_learner(&v), None);
        assert_eq!(s.verify_visitor(&t, 0), None);

        let c = LinkClaims {
            learner: "lms:42".into(),
            exercise: "cron".into(),
            expires_at: 100,
            key: Some("k-1".into()),
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

    /// Found by fuzz/tokens: the operator token of a key id with a dot in it never
    /// verified (the expiry was read from after the first dot, not the last).
    #[test]
    fn operator_tokens_of_dotted_key_ids_verify() {
        let s = Signer::new(b"k1");
        let o = s.operator_token("k.1.x", 50);
        assert_eq!(s.verify_operator(&o, 49).as_deref(), Some("k.1.x"));
        assert_eq!(s.verify_operator(&o, 50), None, "expired");
    }

    /// Found by fuzz/tokens: a token with its MAC's hex in capitals verified too, so one
    /// token had many spellings (each is now refused but the one signed).
    #[test]
    fn a_token_verifies_only_as_it_was_signed() {
        let s = Signer::new(b"k1");
        let o = s.operator_token("k-1", 50);
        let (payload, mac) = o.rsplit_once('.').unwrap();
        assert!(mac.bytes().any(|b| b.is_ascii_lowercase()), "{mac}");
        let upper = format!("{payload}.{}", mac.to_ascii_uppercase());
        assert_eq!(s.verify_operator(&o, 0).as_deref(), Some("k-1"));
        assert_eq!(s.verify_operator(&upper, 0), None);
        let v = s.visitor_token("anon-a", 50);
        let (payload, mac) = v.rsplit_once('.').unwrap();
        let upper = format!("{payload}.{}", mac.to_ascii_uppercase());
        assert_eq!(s.verify_visitor(&upper, 0), None);
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
