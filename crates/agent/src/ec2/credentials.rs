//! The EC2 listener's access keys: an AWS shared credentials file (INI: `[profile]`
//! sections with `aws_access_key_id` and `aws_secret_access_key`), so the same file can be
//! handed to the AWS CLI and boto3 (`AWS_SHARED_CREDENTIALS_FILE`). Loaded once at start;
//! refused unless it is a regular file of the running user with mode 0600, since it holds
//! secrets. Secrets never appear in `Debug` output or in errors.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why the credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// It could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a regular file, not the running user's, or readable by others.
    #[error("{}: {rule}", path.display())]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// The rule it breaks.
        rule: String,
    },
    /// A line is not INI (the line number and why).
    #[error("{}: line {line}: {why}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A profile has one of the two keys without the other, or a key is malformed.
    #[error("{}: [{profile}]: {why}", path.display())]
    Profile {
        /// The file.
        path: PathBuf,
        /// The section.
        profile: String,
        /// What is wrong.
        why: String,
    },
    /// No profile has an access key.
    #[error("{}: no profile has aws_access_key_id and aws_secret_access_key", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A secret access key (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The key's text, for signing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The profile (section) it came from.
    pub profile: String,
    /// Its secret.
    pub secret: Secret,
}

/// The access keys emberd accepts, by access key id.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    keys: HashMap<String, Key>,
}

impl Credentials {
    /// The key with access key id `id`.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.get(id)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Credentials from (access key id, secret) pairs, for tests and tools.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Credentials {
        Credentials {
            keys: pairs
                .into_iter()
                .map(|(id, secret)| {
                    (
                        id.to_string(),
                        Key {
                            profile: "default".into(),
                            secret: Secret(secret.to_string()),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Loads `path`: it must be a regular file owned by the running user with mode 0600
    /// (checked on the open file, so it cannot be swapped between check and read).
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let io = |source| CredentialsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let unsafe_file = |rule: String| CredentialsError::Unsafe {
            path: path.to_path_buf(),
            rule,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let md = f.metadata().map_err(io)?;
        if !md.is_file() {
            return Err(unsafe_file("must be a regular file".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if md.uid() != me {
            return Err(unsafe_file(format!(
                "must be owned by the user emberd runs as (uid {me}), not uid {}",
                md.uid()
            )));
        }
        let mode = md.mode() & 0o7777;
        if mode != 0o600 {
            return Err(unsafe_file(format!(
                "mode is {mode:04o}; it holds secret keys, so it must be 0600 (chmod 600 {})",
                path.display()
            )));
        }
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(io)?;
        parse(path, &text)
    }
}

/// Parses the INI text of `path`: `[section]` lines, `key = value` lines, `#` and `;`
/// comments. Keys other than the two access-key ones (`region`, `aws_session_token`, ...)
/// are the CLI's business and are ignored.
pub fn parse(path: &Path, text: &str) -> Result<Credentials, CredentialsError> {
    // Per profile, in file order: (line of the section, id, secret).
    let mut profiles: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let syntax = |why: &str| CredentialsError::Syntax {
            path: path.to_path_buf(),
            line: n + 1,
            why: why.to_string(),
        };
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| syntax("a section header must end with ']'"))?
                .trim();
            if name.is_empty() {
                return Err(syntax("a section needs a name"));
            }
            if profiles.iter().any(|(p, _, _)| p == name) {
                return Err(syntax("this section was already given"));
            }
            profiles.push((name.to_string(), None, None));
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax("expected 'key = value' or '[section]'"))?;
        let (key, value) = (key.trim(), value.trim());
        let Some((_, id, secret)) = profiles.last_mut() else {
            return Err(syntax("a key before any [section]"));
        };
        let slot = match key {
            "aws_access_key_id" => id,
            "aws_secret_access_key" => secret,
            _ => continue,
        };
        if slot.is_some() {
            return Err(syntax(&format!("{key} given twice in one section")));
        }
        *slot = Some(value.to_string());
    }
    let mut keys = HashMap::new();
    for (profile, id, secret) in profiles {
        let bad = |why: &str| CredentialsError::Profile {
            path: path.to_path_buf(),
            profile: profile.clone(),
            why: why.to_string(),
        };
        let (id, secret) = match (id, secret) {
            (None, None) => continue,
            (Some(id), Some(secret)) => (id, secret),
            (Some(_), None) => return Err(bad("aws_access_key_id without aws_secret_access_key")),
            (None, Some(_)) => return Err(bad("aws_secret_access_key without aws_access_key_id")),
        };
        // The id travels in the Authorization header's Credential=ID/... and in logs.
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(
                "aws_access_key_id must be 1 to 128 ASCII letters and digits",
            ));
        }
        if secret.is_empty() {
            return Err(bad("aws_secret_access_key is empty"));
        }
        if keys.contains_key(&id) {
            return Err(bad(&format!(
                "access key id {id} is also in an earlier profile"
            )));
        }
        keys.insert(
            id,
            Key {
                profile,
                secret: Secret(secret),
            },
        );
    }
    if keys.is_empty() {
        return Err(CredentialsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Credentials { keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "\
# emberd's keys
[default]
aws_access_key_id = AKIDEXAMPLE
aws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
region = ember-1

[ops]
aws_access_key_id=AKIDOPS2
aws_secret_access_key=s3cr3t=with=equals
[empty]
output = json
";

    #[test]
    fn profiles_give_keys_and_other_settings_are_ignored() {
        let c = parse(Path::new("f"), FILE).unwrap();
        assert_eq!(c.len(), 2);
        let k = c.get("AKIDEXAMPLE").unwrap();
        assert_eq!(k.profile, "default");
        assert_eq!(
            k.secret.expose(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
        );
        assert_eq!(
            c.get("AKIDOPS2").unwrap().secret.expose(),
            "s3cr3t=with=equals"
        );
        assert!(c.get("nobody").is_none());
        // Debug output never shows a secret.
        assert!(!format!("{c:?}").contains("EXAMPLEKEY"));
    }

    #[test]
    fn bad_files_name_the_line_or_profile_and_the_rule() {
        let cases = [
            ("aws_access_key_id = A\n", "line 1: a key before any [section]"),
            ("[a\n", "line 1: a section header must end with ']'"),
            ("[]\n", "line 1: a section needs a name"),
            ("[a]\n[a]\n", "line 2: this section was already given"),
            ("[a]\njunk\n", "line 2: expected 'key = value' or '[section]'"),
            (
                "[a]\naws_access_key_id = A\naws_access_key_id = B\n",
                "line 3: aws_access_key_id given twice in one section",
            ),
            (
                "[a]\naws_access_key_id = A\n",
                "[a]: aws_access_key_id without aws_secret_access_key",
            ),
            (
                "[a]\naws_secret_access_key = s\n",
                "[a]: aws_secret_access_key without aws_access_key_id",
            ),
            (
                "[a]\naws_access_key_id = A/B\naws_secret_access_key = s\n",
                "[a]: aws_access_key_id must be 1 to 128 ASCII letters and digits",
            ),
            (
                "[a]\naws_access_key_id = A\naws_secret_access_key =\n",
                "[a]: aws_secret_access_key is empty",
            ),
            (
                "[a]\naws_access_key_id = A\naws_secret_access_key = s\n[b]\naws_access_key_id = A\naws_secret_access_key = t\n",
                "[b]: access key id A is also in an earlier profile",
            ),
            ("# nothing\n", "no profile has aws_access_key_id and aws_secret_access_key"),
        ];
        for (text, want) in cases {
            let e = parse(Path::new("f"), text).unwrap_err().to_string();
            assert_eq!(e, format!("f: {want}"), "{text:?}");
            assert!(!e.contains("s\n"));
        }
    }

    #[test]
    fn the_file_must_be_mode_0600() {
        let dir = std::env::temp_dir().join(format!("emberd-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("credentials");
        std::fs::write(&p, FILE).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("mode is 0644") && e.contains("must be 0600"),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Credentials::load(&p).unwrap().len(), 2);
        let e = Credentials::load(&dir).unwrap_err().to_string();
        assert!(e.contains("must be a regular file"), "{e}");
        let e = Credentials::load(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
