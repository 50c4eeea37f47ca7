//! Resource ids like EC2's: a prefix and 17 lowercase hex digits (`i-0123456789abcdef0`).

use std::io::Read;

/// A new id with `prefix` (`i`, `img`, `vol`), from the kernel's random source.
pub fn new_id(prefix: &str) -> std::io::Result<String> {
    let hex = hex(&random_bytes::<9>()?);
    Ok(format!("{prefix}-{}", &hex[..17]))
}

/// `N` bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` looks like an id with `prefix`.
pub fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|h| {
            h.len() == 17
                && h.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_ec2_shape() {
        let id = new_id("i").unwrap();
        assert!(is_id(&id, "i"), "{id}");
        assert_ne!(id, new_id("i").unwrap());
        assert!(!is_id("i-123", "i"));
        assert!(!is_id("img-0123456789abcdef0", "i"));
    }
}
