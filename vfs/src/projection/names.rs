//! ProjFS's name semantics: the order a provider must list entries in, and how a search
//! expression matches a name.
//!
//! ProjFS merges the provider's listing with what is on disk (placeholders, full files,
//! tombstones) in `PrjFileNameCompare` order, so entries must come in exactly that order; and it
//! filters with `PrjFileNameMatch`. Both are case-insensitive the NTFS way: each UTF-16 code unit is
//! mapped through the upcase table (one unit to one unit: characters whose uppercase is longer,
//! like `ß`, and characters outside the basic plane stay as they are), then compared ordinally.
//! These functions do the same with Rust's simple uppercase mapping, so a harness on Linux sees
//! the order and the matches Windows would produce.

use std::cmp::Ordering;

/// The NTFS-style upcase of one character: its uppercase when that is a single character of the
/// basic plane, else the character itself.
fn upcase(c: char) -> char {
    if c as u32 > 0xFFFF {
        return c;
    }
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) if (u as u32) <= 0xFFFF => u,
        _ => c,
    }
}

/// The key names are ordered by: the UTF-16 code units of the upcased name.
pub fn sort_key(name: &str) -> Vec<u16> {
    let mut key = Vec::with_capacity(name.len());
    let mut buf = [0u16; 2];
    for c in name.chars() {
        key.extend_from_slice(upcase(c).encode_utf16(&mut buf));
    }
    key
}

/// Compares two names as `PrjFileNameCompare` does (`Equal` for names that differ only in case).
pub fn compare(a: &str, b: &str) -> Ordering {
    sort_key(a).cmp(&sort_key(b))
}

/// One element of a search expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A character to match case-insensitively (already upcased).
    Literal(char),
    /// `*`: any run of characters, possibly empty.
    Star,
    /// `?`: exactly one character.
    Any,
    /// `<` (DOS_STAR): any run of characters that does not take the name's last `.`.
    DosStar,
    /// `>` (DOS_QM): one character, or nothing at a `.` or at the end of the name.
    DosQm,
    /// `"` (DOS_DOT): a `.`, or nothing at the end of the name.
    DosDot,
}

fn tokens(expression: &str) -> Vec<Token> {
    expression
        .chars()
        .map(|c| match c {
            '*' => Token::Star,
            '?' => Token::Any,
            '<' => Token::DosStar,
            '>' => Token::DosQm,
            '"' => Token::DosDot,
            c => Token::Literal(upcase(c)),
        })
        .collect()
}

/// Whether `name` matches the search `expression` as `PrjFileNameMatch` (that is,
/// `FsRtlIsNameInExpression` with the DOS wildcards `<`, `>` and `"`) decides, case-insensitively.
/// An empty expression matches every name, as ProjFS treats a missing one.
pub fn matches(name: &str, expression: &str) -> bool {
    if expression.is_empty() || expression == "*" {
        return true;
    }
    let pattern = tokens(expression);
    let name: Vec<char> = name.chars().map(upcase).collect();
    let last_dot = name.iter().rposition(|&c| c == '.');
    // ok[i][j]: pattern[i..] matches name[j..]. Filled from the ends, so every lookup is ready.
    let (p, n) = (pattern.len(), name.len());
    let mut ok = vec![vec![false; n + 1]; p + 1];
    ok[p][n] = true;
    for i in (0..p).rev() {
        for j in (0..=n).rev() {
            let here = name.get(j).copied();
            ok[i][j] = match pattern[i] {
                Token::Literal(c) => here == Some(c) && ok[i + 1][j + 1],
                Token::Any => here.is_some() && ok[i + 1][j + 1],
                Token::Star => ok[i + 1][j] || (here.is_some() && ok[i][j + 1]),
                Token::DosStar => {
                    ok[i + 1][j] || (here.is_some() && Some(j) != last_dot && ok[i][j + 1])
                }
                Token::DosQm => match here {
                    None | Some('.') => ok[i + 1][j],
                    Some(_) => ok[i + 1][j + 1],
                },
                Token::DosDot => match here {
                    None => ok[i + 1][j],
                    Some('.') => ok[i + 1][j + 1],
                    Some(_) => false,
                },
            };
        }
    }
    ok[0][0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_case_insensitively_by_upcased_units() {
        assert_eq!(compare("readme.TXT", "README.txt"), Ordering::Equal);
        assert_eq!(compare("a", "B"), Ordering::Less);
        // Upcasing puts letters before `_` (0x5F), unlike lowercasing would.
        assert_eq!(compare("abc", "_x"), Ordering::Less);
        assert_eq!(compare("Zebra", "_x"), Ordering::Less);
        assert_eq!(compare("é", "É"), Ordering::Equal);
        // `ß` uppercases to two letters: NTFS keeps it as it is.
        assert_eq!(sort_key("ß"), vec!['ß' as u16]);
        let mut names = vec!["b", "_c", "A", "a2", "Ä"];
        names.sort_by(|a, b| compare(a, b));
        assert_eq!(names, ["A", "a2", "b", "_c", "Ä"]);
    }

    #[test]
    fn star_and_question_mark_ignore_case() {
        assert!(matches("Report.TXT", "*.txt"));
        assert!(matches("report.txt", "REP*"));
        assert!(matches("a.b.c", "*.c"));
        assert!(!matches("report.txt", "*.doc"));
        assert!(matches("ab", "a?"));
        assert!(!matches("a", "a?"));
        assert!(!matches("abc", "a?"));
        assert!(matches("anything", ""));
        assert!(matches("anything", "*"));
        assert!(matches("x", "**"));
        assert!(matches("file-00042", "file-000??"));
        assert!(!matches("file-00042", "file-001*"));
    }

    #[test]
    fn dos_wildcards() {
        // `<` stops before the last dot: `<.txt` is what `*.txt` means to DOS.
        assert!(matches("a.b.txt", "<.txt"));
        assert!(!matches("a.txt.bak", "<.txt"));
        assert!(matches("noext", "<"));
        // `>` matches one character, or nothing at a dot or the end.
        assert!(matches("ab", "a>>"));
        assert!(matches("a.c", "a>>.c"));
        assert!(!matches("abcd", "a>>"));
        // `"` matches a dot or the end.
        assert!(matches("name", "name\""));
        assert!(matches("name.", "name\""));
        assert!(!matches("namex", "name\""));
    }
}
