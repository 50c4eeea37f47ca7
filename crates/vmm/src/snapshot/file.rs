//! The snapshot file: a magic number naming the architecture, a format version, the
//! length of the state, the state (serde, bincode), and a CRC-64 over all of it, checked
//! before anything in the file is used.
//!
//! ```text
//! 0   magic        8 bytes  "EMBRx86\x01" or "EMBRa64\x01"
//! 8   version      u32 LE   FORMAT_VERSION
//! 12  length       u64 LE   of the state that follows
//! 20  state        length bytes
//! ..  crc64        u64 LE   CRC-64/XZ of bytes 0 .. 20 + length
//! ```

use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::Path;
use thiserror::Error;

/// This build's format version: bumped whenever the saved state changes shape.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC_X86_64: [u8; 8] = *b"EMBRx86\x01";
const MAGIC_AARCH64: [u8; 8] = *b"EMBRa64\x01";
const HEADER: usize = 20;
const CRC_LEN: usize = 8;
/// No VM's state comes near this; a larger length field means a corrupted file.
const MAX_STATE: u64 = 256 << 20;

#[cfg(target_arch = "x86_64")]
const MAGIC: [u8; 8] = MAGIC_X86_64;
#[cfg(target_arch = "aarch64")]
const MAGIC: [u8; 8] = MAGIC_AARCH64;
#[cfg(target_arch = "x86_64")]
const ARCH: &str = "x86_64";
#[cfg(target_arch = "aarch64")]
const ARCH: &str = "aarch64";

const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Why a snapshot file cannot be written or used.
#[derive(Debug, Error)]
pub enum FileError {
    /// The file cannot be read or written.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Shorter than its header or than its length field says.
    #[error("{0}: truncated: {1} bytes, the header says {2}")]
    Truncated(String, usize, u64),
    /// Not an ember snapshot at all.
    #[error("{0}: not an ember snapshot (no ember magic number)")]
    NotSnapshot(String),
    /// A snapshot of the other architecture.
    #[error("{0}: a snapshot of an {1} VM; this ember runs {ARCH} guests")]
    OtherArch(String, &'static str),
    /// Another format version.
    #[error("{0}: snapshot format version {1}; this ember reads version {FORMAT_VERSION}")]
    Version(String, u32),
    /// The checksum does not match.
    #[error(
        "{0}: checksum mismatch (stored {1:#018x}, computed {2:#018x}): the file is corrupted"
    )]
    Checksum(String, u64, u64),
    /// The state does not decode.
    #[error("{0}: the saved state does not decode: {1}")]
    Decode(String, String),
    /// The state does not encode.
    #[error("the VM state does not encode: {0}")]
    Encode(String),
}

/// Encodes `state` as a snapshot file's bytes.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FileError> {
    let body = bincode::serialize(state).map_err(|e| FileError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER + body.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a snapshot file's bytes; `name` is for the messages. Every check is made
/// before the state is decoded.
pub fn decode<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, FileError> {
    let n = name.to_string();
    let (Some(magic), Some(version), Some(length)) = (
        bytes.get(0..8),
        bytes.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()),
        bytes.get(12..20).and_then(|b| <[u8; 8]>::try_from(b).ok()),
    ) else {
        if bytes.len() >= 8 && bytes[..8] != MAGIC_X86_64 && bytes[..8] != MAGIC_AARCH64 {
            return Err(FileError::NotSnapshot(n));
        }
        return Err(FileError::Truncated(n, bytes.len(), HEADER as u64));
    };
    if magic != MAGIC {
        return Err(match magic {
            m if m == MAGIC_X86_64 => FileError::OtherArch(n, "x86_64"),
            m if m == MAGIC_AARCH64 => FileError::OtherArch(n, "aarch64"),
            _ => FileError::NotSnapshot(n),
        });
    }
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(FileError::Version(n, version));
    }
    let length = u64::from_le_bytes(length);
    let total = length
        .checked_add((HEADER + CRC_LEN) as u64)
        .filter(|_| length <= MAX_STATE);
    let Some(end) = total.and_then(|t| usize::try_from(t).ok()) else {
        return Err(FileError::Truncated(n, bytes.len(), length));
    };
    if bytes.len() < end {
        return Err(FileError::Truncated(n, bytes.len(), end as u64));
    }
    let body_end = end - CRC_LEN;
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&bytes[body_end..end]);
    let stored = u64::from_le_bytes(stored);
    let computed = CRC.checksum(&bytes[..body_end]);
    if stored != computed {
        return Err(FileError::Checksum(n, stored, computed));
    }
    bincode::deserialize(&bytes[HEADER..body_end]).map_err(|e| FileError::Decode(n, e.to_string()))
}

/// Writes `bytes` to `path` durably: a temporary file beside it, fsync'd, renamed over.
/// A crash leaves the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let shown = path.display().to_string();
    let io = |e| FileError::Io(shown.clone(), e);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads and decodes the snapshot at `path`: a regular file no larger than a state can
/// be (a device or a huge file is refused before anything is read).
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let io = |e| FileError::Io(shown.clone(), e);
    let f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let limit = MAX_STATE + (HEADER + CRC_LEN) as u64;
    if !meta.is_file() || meta.len() > limit {
        return Err(FileError::Io(
            shown.clone(),
            std::io::Error::other(format!("not a regular file of at most {limit} bytes")),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(limit).read_to_end(&mut bytes).map_err(io)?;
    decode(&shown, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_corruption_is_named() {
        let state = (7u32, "hello".to_string(), vec![1u64, 2, 3]);
        let bytes = encode(&state).unwrap();
        let back: (u32, String, Vec<u64>) = decode("s", &bytes).unwrap();
        assert_eq!(back, state);
        let err = |b: &[u8]| {
            decode::<(u32, String, Vec<u64>)>("s", b)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&bytes[..bytes.len() - 1]).contains("truncated"));
        assert!(err(&bytes[..10]).contains("truncated"));
        assert!(err(b"hello world, not a snapshot").contains("not an ember snapshot"));
        let mut flipped = bytes.clone();
        flipped[HEADER + 2] ^= 0x40;
        assert!(err(&flipped).contains("checksum mismatch"));
        let mut other = bytes.clone();
        other[..8].copy_from_slice(if MAGIC == MAGIC_X86_64 {
            &MAGIC_AARCH64
        } else {
            &MAGIC_X86_64
        });
        assert!(err(&other).contains("this ember runs"), "{}", err(&other));
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(err(&newer).contains("format version 2"));
        let mut huge = bytes;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&huge).contains("truncated"));
    }
}
