//! Located errors in pipeline files.
//!
//! Every problem a user can make in a pipeline file is reported with the file,
//! line, column and the dotted key it concerns, plus the offending source line,
//! so the fix is obvious without reading ablate's code.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    pub line: usize,
    pub col: usize,
}

/// The largest pipeline file read.
const MAX_FILE: u64 = 16 << 20;

/// The source text of a pipeline file and where it came from.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn read(path: &Path) -> Result<SourceFile, Diagnostics> {
        let unreadable = |message: String| -> Diagnostics {
            Diagnostic { file: path.to_path_buf(), at: None, key: String::new(), message, snippet: None }.into()
        };
        // Read through a limit: a pipeline file is small, and a path such as
        // /dev/zero would otherwise be read until memory runs out.
        let mut bytes = Vec::new();
        let read =
            std::fs::File::open(path).and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE + 1), &mut bytes));
        if read.is_ok() && bytes.len() as u64 > MAX_FILE {
            return Err(unreadable(format!("the pipeline file is larger than {} MiB", MAX_FILE >> 20)));
        }
        match read.map(|_| bytes) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Ok(SourceFile { path: path.to_path_buf(), text }),
                Err(e) => {
                    let offset = e.utf8_error().valid_up_to();
                    let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    let file = SourceFile { path: path.to_path_buf(), text };
                    Err(file.error(Some(offset..offset + 1), "", "the file is not valid UTF-8").into())
                }
            },
            Err(e) => Err(unreadable(format!("cannot read the pipeline file: {e}"))),
        }
    }

    pub fn line_col(&self, offset: usize) -> LineCol {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        LineCol { line, col: before[line_start..].chars().count() + 1 }
    }

    /// An error at `span` (byte offsets) about the dotted `key`.
    pub fn error(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> Diagnostic {
        let at = span.as_ref().map(|s| self.line_col(s.start));
        let snippet = span.map(|span| {
            let at = self.line_col(span.start);
            let line_text = self.text.lines().nth(at.line - 1).unwrap_or("").to_owned();
            let width = self.text
                [floor_char_boundary(&self.text, span.start)..floor_char_boundary(&self.text, span.end.min(self.text.len()))]
                .lines()
                .next()
                .map_or(1, |s| s.chars().count().max(1));
            Snippet::around(&line_text, at.col, width)
        });
        Diagnostic { file: self.path.clone(), at, key: key.to_owned(), message: message.into(), snippet }
    }
}

pub(super) fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Debug, Clone)]
struct Snippet {
    line_text: String,
    col: usize,
    width: usize,
}

/// Characters of a long line shown on each side of the error's column.
const SNIPPET_CONTEXT: usize = 60;

impl Snippet {
    /// The line with the caret under column `col` (1-based), cut to a
    /// window around it when the line is long (a generated file may have
    /// lines of megabytes).
    fn around(line: &str, col: usize, width: usize) -> Snippet {
        let chars = line.chars().count();
        if chars <= 3 * SNIPPET_CONTEXT {
            return Snippet { line_text: line.to_owned(), col, width };
        }
        let start = col.saturating_sub(SNIPPET_CONTEXT + 1);
        let end = (col - 1 + width.min(SNIPPET_CONTEXT) + SNIPPET_CONTEXT).min(chars);
        let lead = if start > 0 { "…" } else { "" };
        let tail = if end < chars { "…" } else { "" };
        let window: String = line.chars().skip(start).take(end - start).collect();
        Snippet {
            line_text: format!("{lead}{window}{tail}"),
            col: col - start + lead.chars().count(),
            width: width.min(end + 1 - col.min(end)).max(1),
        }
    }
}

/// One located problem.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub at: Option<LineCol>,
    /// Dotted key path, e.g. `stages.train.lr` (empty when not about a key).
    pub key: String,
    pub message: String,
    snippet: Option<Snippet>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(at) = self.at {
            write!(f, ":{}:{}", at.line, at.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let (Some(at), Some(snippet)) = (self.at, &self.snippet) {
            let gutter = at.line.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{} | {}\n{:gutter$} | {}{}",
                "",
                at.line,
                snippet.line_text,
                "",
                " ".repeat(snippet.col - 1),
                "^".repeat(snippet.width)
            )?;
        }
        Ok(())
    }
}

/// All problems found in one pipeline file.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
