//! Tokens: the terminal gateway's (owner/viewer, bound to one terminal) and the web UI's
//! (learner sessions, visitor cookies, signed LMS links, operator sessions). A token signed
//! for claims verifies to exactly those claims when they are valid and unexpired, and is
//! refused otherwise; the same token mangled anywhere (any byte changed, cut, extended)
//! never verifies; nor does it under another key or for another purpose; and no string at
//! all verifies under a key the fuzzer does not know. Never a panic.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rnr_terminal::{Claims, GatewayError, Role};
use rnr_ui::{valid_learner, LearnerClaims, LinkClaims};

#[derive(Arbitrary, Debug)]
struct Input {
    key: Vec<u8>,
    terminal: String,
    machine: String,
    viewer: bool,
    expires_at: i64,
    now: i64,
    learner: String,
    exercise: String,
    until: i64,
    api_key: Option<String>,
    /// Changes to a genuine token: (where, xor with), then cut or extend.
    flips: Vec<(u16, u8)>,
    cut: Option<u16>,
    extend: String,
    /// A string that is no token of ours.
    raw: String,
}

/// A terminal id or machine id as the gateway takes them.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `token` changed as the input says, or `None` when nothing changed.
fn mangle(token: &str, input: &Input) -> Option<String> {
    let mut b = token.as_bytes().to_vec();
    for &(at, x) in input.flips.iter().take(4) {
        if !b.is_empty() {
            let i = usize::from(at) % b.len();
            b[i] ^= x;
        }
    }
    if let Some(cut) = input.cut {
        b.truncate(usize::from(cut) % (b.len() + 1));
    }
    b.extend_from_slice(input.extend.as_bytes());
    let s = String::from_utf8(b).ok()?;
    (s != token).then_some(s)
}

/// Another key: the first byte changed (HMAC pads short keys with zeros, so appending
/// zeros would be the same key).
fn other_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    match k.first_mut() {
        Some(b) => *b ^= 0x80,
        None => k.push(1),
    }
    k
}

fn terminal_tokens(input: &Input) {
    let signer = rnr_terminal::Signer::new(&input.key);
    let claims = Claims {
        terminal: input.terminal.clone(),
        machine: input.machine.clone(),
        role: if input.viewer {
            Role::Viewer
        } else {
            Role::Owner
        },
        expires_at: input.expires_at,
    };
    let token = signer.sign(&claims);
    let valid = is_id(&claims.terminal) && is_id(&claims.machine);
    match signer.verify(&token, &claims.terminal, input.now) {
        Ok(c) => {
            assert!(valid && input.expires_at >= input.now, "{claims:?}");
            assert_eq!(c, claims);
        }
        Err(GatewayError::TokenExpired(_)) => {
            assert!(valid && input.expires_at < input.now, "{claims:?}")
        }
        Err(GatewayError::TokenInvalid(_)) => assert!(!valid, "{claims:?}"),
        Err(e) => panic!("{e}"),
    }
    if let Some(bad) = mangle(&token, input) {
        assert!(
            matches!(
                signer.verify(&bad, &claims.terminal, input.now),
                Err(GatewayError::TokenInvalid(_))
            ),
            "mangled {token:?} into {bad:?}, which verified"
        );
    }
    let other = rnr_terminal::Signer::new(&other_key(&input.key));
    assert!(other.verify(&token, &claims.terminal, input.now).is_err());
    // Bound to its terminal.
    if input.machine != input.terminal {
        assert!(signer.verify(&token, &input.machine, input.now).is_err());
    }
    let unknown = rnr_terminal::Signer::new(b"a secret the fuzzer never sees");
    assert!(unknown
        .verify(&input.raw, &input.terminal, i64::MIN)
        .is_err());
}

fn ui_tokens(input: &Input) {
    let s = rnr_ui::Signer::new(&input.key);
    let other = rnr_ui::Signer::new(&other_key(&input.key));
    let learner = LearnerClaims {
        learner: input.learner.clone(),
        exercise: input.exercise.clone(),
        expires_at: input.expires_at,
        until: input.until,
        key: input.api_key.clone(),
    };
    let t = s.learner_token(&learner);
    let want = valid_learner(&learner.learner).then(|| learner.clone());
    assert_eq!(s.verify_learner(&t), want);
    assert_eq!(other.verify_learner(&t), None);
    assert_eq!(s.verify_link(&t), None, "a learner token is no link");

    let link = LinkClaims {
        learner: input.learner.clone(),
        exercise: input.exercise.clone(),
        expires_at: input.expires_at,
        key: input.api_key.clone(),
    };
    let l = s.link_token(&link);
    assert_eq!(s.verify_link(&l).as_ref(), Some(&link));
    assert_eq!(other.verify_link(&l), None);
    assert_eq!(s.verify_learner(&l), None, "a link is no learner token");

    let v = s.visitor_token(&input.learner, input.expires_at);
    let want = (valid_learner(&input.learner) && input.expires_at > input.now)
        .then(|| (input.learner.clone(), input.expires_at));
    assert_eq!(s.verify_visitor(&v, input.now), want);
    assert_eq!(other.verify_visitor(&v, input.now), None);

    let key_id = input.api_key.clone().unwrap_or_default();
    let o = s.operator_token(&key_id, input.expires_at);
    let want = (input.expires_at > input.now).then(|| key_id.clone());
    assert_eq!(s.verify_operator(&o, input.now), want, "{o:?}");
    assert_eq!(other.verify_operator(&o, input.now), None);
    assert_eq!(
        s.verify_visitor(&o, input.now),
        None,
        "an operator token is no visitor"
    );

    for (what, token) in [
        ("learner", &t),
        ("link", &l),
        ("visitor", &v),
        ("operator", &o),
    ] {
        let Some(bad) = mangle(token, input) else {
            continue;
        };
        let accepted = match what {
            "learner" => s.verify_learner(&bad).is_some(),
            "link" => s.verify_link(&bad).is_some(),
            "visitor" => s.verify_visitor(&bad, i64::MIN).is_some(),
            _ => s.verify_operator(&bad, i64::MIN).is_some(),
        };
        assert!(
            !accepted,
            "{what} token {token:?} mangled into {bad:?} verified"
        );
    }

    let unknown = rnr_ui::Signer::new(b"a secret the fuzzer never sees");
    assert_eq!(unknown.verify_learner(&input.raw), None);
    assert_eq!(unknown.verify_link(&input.raw), None);
    assert_eq!(unknown.verify_visitor(&input.raw, i64::MIN), None);
    assert_eq!(unknown.verify_operator(&input.raw, i64::MIN), None);
}

fuzz_target!(|input: Input| {
    terminal_tokens(&input);
    ui_tokens(&input);
});
