//! MMDS version 2 session tokens: opaque random strings with a time to live.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The shortest lifetime a token may be given, in seconds.
pub const MIN_TTL_SECONDS: u32 = 1;
/// The longest lifetime a token may be given, in seconds (6 hours).
pub const MAX_TTL_SECONDS: u32 = 21600;
/// How many live tokens an authority keeps by default; issuing one more forgets the oldest.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Random bytes in a token (it is their hex spelling).
const TOKEN_BYTES: usize = 32;

/// Why a token could not be issued.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// The requested lifetime is outside 1..=21600 seconds.
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}."
    )]
    InvalidTtl(String),
    /// The system's random source failed.
    #[error("Failed to generate token: getrandom failed (errno {0}).")]
    Random(i32),
}

struct Token {
    secret: String,
    expires: Instant,
}

/// Issues and checks session tokens. Holds at most a bounded number of live tokens;
/// the clock is always passed in, so tests choose the time.
pub struct TokenAuthority {
    tokens: VecDeque<Token>,
    max_tokens: usize,
}

impl Default for TokenAuthority {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TOKENS)
    }
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("TokenAuthority")
            .field("tokens", &self.tokens.len())
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl TokenAuthority {
    /// An authority that keeps at most `max_tokens` (at least one) live tokens.
    pub fn new(max_tokens: usize) -> Self {
        Self {
            tokens: VecDeque::new(),
            max_tokens: max_tokens.max(1),
        }
    }

    /// Parses a `X-metadata-token-ttl-seconds` value and issues a token for it.
    pub fn issue_from_header(&mut self, ttl: &str, now: Instant) -> Result<String, TokenError> {
        match ttl.trim().parse::<u32>() {
            Ok(secs) => self.issue(secs, now),
            Err(_) => Err(TokenError::InvalidTtl(ttl.trim().to_string())),
        }
    }

    /// Issues a token valid for `ttl_seconds` (1..=21600) from `now`.
    pub fn issue(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds.to_string()));
        }
        let secret = random_hex()?;
        self.tokens.retain(|t| t.expires > now);
        while self.tokens.len() >= self.max_tokens {
            self.tokens.pop_front();
        }
        self.tokens.push_back(Token {
            secret: secret.clone(),
            expires: now + Duration::from_secs(u64::from(ttl_seconds)),
        });
        Ok(secret)
    }

    /// Whether `token` was issued here and has not expired at `now`.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        let token = token.trim().as_bytes();
        if token.len() != TOKEN_BYTES * 2 {
            return false;
        }
        // Every live token is compared in full, so the time taken says nothing of a match.
        let mut found = false;
        for t in &self.tokens {
            let same = t
                .secret
                .as_bytes()
                .iter()
                .zip(token)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            found |= same && t.expires > now;
        }
        found
    }

    /// Live (possibly expired, not yet forgotten) tokens held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Forgets every token (say, when the service goes back to version 1).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }
}

/// Fills `buf` from the kernel's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), TokenError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno == libc::EINTR {
                continue;
            }
            return Err(TokenError::Random(errno));
        }
        done += n.unsigned_abs();
    }
    Ok(())
}

fn random_hex() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    fill_random(&mut bytes)?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(TOKEN_BYTES * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules() {
        let now = Instant::now();
        let mut ta = TokenAuthority::default();
        for bad in [0, MAX_TTL_SECONDS + 1, u32::MAX] {
            let e = ta.issue(bad, now).unwrap_err();
            assert_eq!(e, TokenError::InvalidTtl(bad.to_string()));
        }
        assert_eq!(
            TokenError::InvalidTtl("0".into()).to_string(),
            "Invalid time to live value provided for token: 0. Please provide a value between 1 and 21600."
        );
        for bad in ["", "abc", "-1", "1.5", "99999999999"] {
            assert!(matches!(
                ta.issue_from_header(bad, now),
                Err(TokenError::InvalidTtl(_))
            ));
        }
        assert!(ta.is_empty());
        let t = ta.issue(MIN_TTL_SECONDS, now).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        ta.issue(MAX_TTL_SECONDS, now).unwrap();
        ta.issue_from_header(" 60 ", now).unwrap();
        assert_eq!(ta.len(), 3);
    }

    #[test]
    fn expiry_and_unknown_tokens() {
        let now = Instant::now();
        let mut ta = TokenAuthority::default();
        let t = ta.issue(10, now).unwrap();
        let u = ta.issue(10, now).unwrap();
        assert_ne!(t, u);
        assert!(ta.is_valid(&t, now));
        assert!(ta.is_valid(&t, now + Duration::from_millis(9999)));
        assert!(!ta.is_valid(&t, now + Duration::from_secs(10)));
        assert!(!ta.is_valid("not a token", now));
        assert!(!ta.is_valid(&"0".repeat(64), now));
        assert!(!ta.is_valid("", now));
        // Expired ones are forgotten when the next is issued.
        ta.issue(1, now + Duration::from_secs(11)).unwrap();
        assert_eq!(ta.len(), 1);
        ta.clear();
        assert!(!ta.is_valid(&u, now));
    }

    #[test]
    fn bounded_oldest_evicted() {
        let now = Instant::now();
        let mut ta = TokenAuthority::new(3);
        let first = ta.issue(100, now).unwrap();
        let rest: Vec<_> = (0..3).map(|_| ta.issue(100, now).unwrap()).collect();
        assert_eq!(ta.len(), 3);
        assert!(!ta.is_valid(&first, now));
        assert!(rest.iter().all(|t| ta.is_valid(t, now)));
    }
}
