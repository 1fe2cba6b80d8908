//! The tokens file (`STEPD_TOKENS_FILE`, `[service] tokens_file`, `stepd
//! serve --tokens-file`): the API's bearer tokens with a name each, kept in
//! a file of their own (mode 0600, or a systemd credential) rather than in
//! the environment or the settings file that lives in an infrastructure
//! repository. The name is what records show of the caller
//! (`requestedBy`, request logs), never the token.
//!
//! ```toml
//! [[operator]]
//! name = "alice"
//! token = "…at least 16 characters…"
//!
//! [[worker]]
//! name = "worker-host-b"
//! token = "…"
//! ```

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use super::ConfigError;

/// The largest tokens file read (a few hundred tokens).
pub const MAX_TOKENS_FILE_BYTES: u64 = 64 * 1024;

/// The shortest token the file accepts: shorter ones can be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// One token and the name records show for it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    /// `[A-Za-z0-9._-]`, 1 to 64 characters, unique in the file.
    pub name: String,
    /// The bearer token.
    pub token: String,
}

/// Never the token, whatever prints it.
impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedToken")
            .field("name", &self.name)
            .field("token", &"***")
            .finish()
    }
}

/// The file's two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Tokens of the operator scope.
    #[serde(default)]
    pub operator: Vec<NamedToken>,
    /// Tokens of the worker scope.
    #[serde(default)]
    pub worker: Vec<NamedToken>,
}

impl TokensFile {
    /// Read and check `path`: a regular file of at most
    /// [`MAX_TOKENS_FILE_BYTES`], not readable or writable by group or
    /// others, every name valid and unique, every token at least
    /// [`MIN_TOKEN_CHARS`] long, without whitespace and in one scope only.
    /// Errors name the file and the entry, never a token.
    pub fn read(path: &Path) -> Result<TokensFile, ConfigError> {
        let fail = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open the tokens file: {e}")))?;
        let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("the tokens file is not a regular file".into()));
        }
        check_mode(&meta).map_err(fail)?;
        let mut text = String::new();
        file.take(MAX_TOKENS_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| fail(format!("cannot read the tokens file as UTF-8: {e}")))?;
        if text.len() as u64 > MAX_TOKENS_FILE_BYTES {
            return Err(fail(format!(
                "the tokens file is larger than {MAX_TOKENS_FILE_BYTES} bytes"
            )));
        }
        // toml's own messages quote the offending line, which may hold a
        // token: only its position and kind are reported.
        let parsed: TokensFile = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map_or(1, |before| before.matches('\n').count() + 1);
            fail(format!(
                "line {line}: not a tokens file ([[operator]] and [[worker]] tables of name and token); {}",
                first_line_without_quotes(e.message())
            ))
        })?;
        parsed.check().map_err(fail)?;
        Ok(parsed)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        for (scope, list) in [("operator", &self.operator), ("worker", &self.worker)] {
            for (i, entry) in list.iter().enumerate() {
                let which = format!("[[{scope}]] #{} ({:?})", i + 1, entry.name);
                let valid_name = (1..=64).contains(&entry.name.len())
                    && entry
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !valid_name {
                    return Err(format!("{which}: a name is 1 to 64 letters, digits, '.', '_' or '-'"));
                }
                if !names.insert(entry.name.clone()) {
                    return Err(format!("{which}: the name is used twice"));
                }
                if entry.token.chars().count() < MIN_TOKEN_CHARS || entry.token.chars().any(char::is_whitespace) {
                    return Err(format!(
                        "{which}: a token is at least {MIN_TOKEN_CHARS} characters, without whitespace"
                    ));
                }
                if !tokens.insert(entry.token.clone()) {
                    return Err(format!("{which}: the same token appears twice (one token, one scope)"));
                }
            }
        }
        Ok(())
    }
}

/// A file others can read leaks every token in it.
#[cfg(unix)]
fn check_mode(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o066 != 0 {
        return Err(format!(
            "the tokens file is readable or writable by group or others (mode {mode:04o}); chmod 600 it"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// A parser message's first line with anything quoted cut out.
fn first_line_without_quotes(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    match line.find(['`', '"', '\'']) {
        Some(cut) => format!("{}…", line[..cut].trim_end()),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        file
    }

    const TOKEN_A: &str = "tok-aaaaaaaaaaaaaaaa";
    const TOKEN_B: &str = "tok-bbbbbbbbbbbbbbbb";

    #[test]
    fn a_private_file_of_named_tokens_is_read_in_order() {
        let file = write(
            &format!(
                "[[operator]]\nname = \"alice\"\ntoken = \"{TOKEN_A}\"\n\n[[worker]]\nname = \"host-b\"\ntoken = \"{TOKEN_B}\"\n"
            ),
            0o600,
        );
        let tokens = TokensFile::read(file.path()).expect("read");
        assert_eq!(tokens.operator.len(), 1);
        assert_eq!(tokens.operator[0].name, "alice");
        assert_eq!(tokens.worker[0].token, TOKEN_B);
        assert!(!format!("{tokens:?}").contains(TOKEN_A), "Debug must not show a token");
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem_and_never_a_token() {
        let cases = [
            (format!("[[operator]]\nname = \"alice\"\ntoken = \"{TOKEN_A}\"\n"), 0o644, "chmod 600"),
            ("[[operator]]\nname = \"alice\"\ntoken = \"short\"\n".to_owned(), 0o600, "at least 16"),
            (
                format!("[[operator]]\nname = \"a b\"\ntoken = \"{TOKEN_A}\"\n"),
                0o600,
                "a name is",
            ),
            (
                format!(
                    "[[operator]]\nname = \"a\"\ntoken = \"{TOKEN_A}\"\n[[worker]]\nname = \"b\"\ntoken = \"{TOKEN_A}\"\n"
                ),
                0o600,
                "one token, one scope",
            ),
            (
                format!("[[operator]]\nname = \"a\"\ntoken = \"{TOKEN_A}\"\nscope = \"{TOKEN_B}\"\n"),
                0o600,
                "unknown field",
            ),
            (format!("[[operator]]\nname = \"a\"\ntoken = {TOKEN_A}\n"), 0o600, "line 3"),
        ];
        for (text, mode, expected) in cases {
            let file = write(&text, mode);
            let message = TokensFile::read(file.path()).expect_err(expected).to_string();
            assert!(message.contains(expected), "{expected}: {message}");
            assert!(message.contains(&file.path().display().to_string()), "{message}");
            assert!(
                !message.contains(TOKEN_A) && !message.contains(TOKEN_B),
                "a token leaked: {message}"
            );
        }
        let dir = tempfile::tempdir().expect("dir");
        let message = TokensFile::read(dir.path()).expect_err("a directory").to_string();
        assert!(message.contains("not a regular file"), "{message}");
    }
}
