//! The file names a patch's headers spell out, read from the raw text
//! independently of libgit2's parser.
//!
//! libgit2 normalises some names as it parses (`b//etc/x` comes out
//! relative), so checking only its parsed paths would let a patch that
//! *names* an absolute or `..` path through, silently rewritten. The patch
//! is refused instead: whatever the text names must be safe, and whatever
//! libgit2 understood must be safe too (`patch.rs` checks both).
//!
//! Header lines are those outside hunks (hunk bodies are skipped by their
//! line counts, so a removed line `-- x` is never read as `--- x`).

/// One name found in a header, with the header kind for messages.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HeaderName {
    /// The name with git's `a/` or `b/` prefix removed where it applies.
    pub path: Vec<u8>,
    /// Whether the raw name was absolute before any prefix was removed
    /// (`+++ /etc/x`), which `git apply -p1` would quietly make relative.
    pub raw_absolute: bool,
}

/// Every name the headers of `patch` give (except `/dev/null`).
pub(crate) fn header_names(patch: &[u8]) -> Vec<HeaderName> {
    let mut names = Vec::new();
    let (mut old_left, mut new_left) = (0u64, 0u64);
    for line in patch.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if old_left > 0 || new_left > 0 {
            match line.first() {
                Some(b' ') | None => {
                    old_left = old_left.saturating_sub(1);
                    new_left = new_left.saturating_sub(1);
                    continue;
                }
                Some(b'-') => {
                    old_left = old_left.saturating_sub(1);
                    continue;
                }
                Some(b'+') => {
                    new_left = new_left.saturating_sub(1);
                    continue;
                }
                Some(b'\\') => continue,
                // A short hunk: this line is a header again.
                Some(_) => (old_left, new_left) = (0, 0),
            }
        }
        if let Some(rest) = line.strip_prefix(b"@@ -") {
            (old_left, new_left) = hunk_counts(rest);
        } else if let Some(rest) = line.strip_prefix(b"diff --git ") {
            git_line_names(rest, &mut names);
        } else if let Some(rest) = line.strip_prefix(b"--- ").or_else(|| line.strip_prefix(b"+++ ")) {
            if let Some(raw) = header_value(rest) {
                push_prefixed(raw, &mut names);
            }
        } else if let Some(rest) = [&b"rename from "[..], b"rename to ", b"copy from ", b"copy to "]
            .iter()
            .find_map(|prefix| line.strip_prefix(*prefix))
        {
            if let Some(raw) = header_value(rest) {
                names.push(HeaderName {
                    raw_absolute: raw.starts_with(b"/"),
                    path: raw,
                });
            }
        }
    }
    names
}

/// `(old count, new count)` of `@@ -a[,b] +c[,d] @@` (after the `@@ -`).
fn hunk_counts(rest: &[u8]) -> (u64, u64) {
    let text = String::from_utf8_lossy(rest);
    let mut ranges = text.split_whitespace();
    let count = |range: Option<&str>| {
        range.map_or(0, |r| {
            r.split_once(',').map_or(Some(1), |(_, n)| n.parse().ok()).unwrap_or(0)
        })
    };
    let old = count(ranges.next());
    let new = count(ranges.next().and_then(|r| r.strip_prefix('+')));
    (old, new)
}

/// A `---`/`+++` name: strip `a/` or `b/` (the prefix `git apply -p1`
/// removes) and skip `/dev/null`.
fn push_prefixed(raw: Vec<u8>, names: &mut Vec<HeaderName>) {
    if raw == b"/dev/null" {
        return;
    }
    let raw_absolute = raw.starts_with(b"/");
    let path = raw
        .strip_prefix(b"a/")
        .or_else(|| raw.strip_prefix(b"b/"))
        .unwrap_or(&raw)
        .to_vec();
    names.push(HeaderName { path, raw_absolute });
}

/// The name on a header line: C-quoted, or raw up to a tab (GNU diff puts
/// a timestamp after one).
fn header_value(rest: &[u8]) -> Option<Vec<u8>> {
    if rest.first() == Some(&b'"') {
        return unquote(rest).map(|(name, _)| name);
    }
    let end = rest.iter().position(|&b| b == b'\t').unwrap_or(rest.len());
    let name = rest[..end].trim_ascii_end();
    (!name.is_empty()).then(|| name.to_vec())
}

/// The names of `diff --git a/X b/Y`. Unquoted names are ambiguous when
/// they hold spaces; like git, prefer the split where both sides name the
/// same path, and otherwise report every possible split.
fn git_line_names(rest: &[u8], names: &mut Vec<HeaderName>) {
    if rest.first() == Some(&b'"') {
        if let Some((old, tail)) = unquote(rest) {
            push_prefixed(old, names);
            let tail = tail.trim_ascii_start();
            if let Some(new) = header_value(tail) {
                push_prefixed(new, names);
            }
        }
        return;
    }
    if rest.last() == Some(&b'"') {
        if let Some(start) = rest.iter().position(|&b| b == b'"') {
            if let Some((new, _)) = unquote(&rest[start..]) {
                push_prefixed(rest[..start].trim_ascii_end().to_vec(), names);
                push_prefixed(new, names);
                return;
            }
        }
    }
    let splits: Vec<usize> = (0..rest.len()).filter(|&i| rest[i] == b' ').collect();
    let strip = |s: &[u8]| {
        s.strip_prefix(b"a/")
            .or_else(|| s.strip_prefix(b"b/"))
            .unwrap_or(s)
            .to_vec()
    };
    if let Some(&i) = splits.iter().find(|&&i| strip(&rest[..i]) == strip(&rest[i + 1..])) {
        push_prefixed(rest[..i].to_vec(), names);
        return;
    }
    for i in splits {
        push_prefixed(rest[..i].to_vec(), names);
        push_prefixed(rest[i + 1..].to_vec(), names);
    }
}

/// Decode a C-quoted name as git writes it (`"a/tab\there"`, octal
/// escapes for other bytes); returns the name and what follows the quote.
fn unquote(s: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some((out, &s[i + 1..])),
            b'\\' => {
                let c = *s.get(i + 1)?;
                i += 2;
                match c {
                    b'a' => out.push(7),
                    b'b' => out.push(8),
                    b't' => out.push(b'\t'),
                    b'n' => out.push(b'\n'),
                    b'v' => out.push(11),
                    b'f' => out.push(12),
                    b'r' => out.push(b'\r'),
                    b'0'..=b'7' => {
                        let digits = s.get(i - 1..i + 2)?;
                        if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                            return None;
                        }
                        let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                        out.push(u8::try_from(value).ok()?);
                        i += 2;
                    }
                    other => out.push(other),
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(patch: &str) -> Vec<(String, bool)> {
        header_names(patch.as_bytes())
            .into_iter()
            .map(|n| (String::from_utf8_lossy(&n.path).into_owned(), n.raw_absolute))
            .collect()
    }

    #[test]
    fn header_names_skip_hunk_bodies_and_dev_null() {
        let patch = "diff --git a/sql/x.sql b/sql/x.sql\nindex 1..2 100644\n--- a/sql/x.sql\n+++ b/sql/x.sql\n\
                     @@ -1,2 +1,2 @@\n--- a comment\n+++ looks like a header\n context\n\
                     diff --git a/n b/n\nnew file mode 100644\n--- /dev/null\n+++ b/n\n@@ -0,0 +1 @@\n+x\n";
        let all = paths(patch);
        assert!(
            all.iter().all(|(p, abs)| (p == "sql/x.sql" || p == "n") && !abs),
            "{all:?}"
        );
    }

    #[test]
    fn header_names_decode_quotes_and_see_absolute_names() {
        assert!(paths("diff --git \"a/t\\tb\" \"b/t\\tb\"\n").contains(&("t\tb".to_owned(), false)));
        assert!(paths("diff --git a/\\303\\251 b/x\n--- \"a/\\303\\251\"\n").contains(&("é".to_owned(), false)));
        assert!(paths("--- /etc/x\n").contains(&("/etc/x".to_owned(), true)));
        assert!(paths("diff --git a//etc/x b//etc/x\n").contains(&("/etc/x".to_owned(), false)));
        assert!(paths("rename to ../x\n").contains(&("../x".to_owned(), false)));
        assert_eq!(
            paths("diff --git a/my file b/my file\n"),
            [("my file".to_owned(), false)]
        );
    }
}
