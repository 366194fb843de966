//! Tokenizers for the scratch (CLIP) text tower: by default a word-level
//! vocabulary built from the training captions, so the baseline needs no
//! downloaded files; or any Hugging Face `tokenizer.json` (parameter
//! `tokenizer`). Either way a caption becomes ids ending at an `<eos>`-like
//! last token, where the tower pools.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};

pub const PAD: u32 = 0;
const SPECIALS: [&str; 4] = ["<pad>", "<unk>", "<sos>", "<eos>"];
const UNK: u32 = 1;
const SOS: u32 = 2;
const EOS: u32 = 3;

/// Lower-cased words and single punctuation marks.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !ch.is_whitespace() {
            out.push(ch.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// A word-level vocabulary: the specials, then every word of the training
/// captions by descending count (ties alphabetical), so it is deterministic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WordVocab {
    pub words: Vec<String>,
    #[serde(skip)]
    index: BTreeMap<String, u32>,
}

impl WordVocab {
    pub fn build<'a>(captions: impl IntoIterator<Item = &'a str>) -> WordVocab {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in captions {
            for w in words(c) {
                *counts.entry(w).or_default() += 1;
            }
        }
        let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let words = SPECIALS.iter().map(|s| s.to_string()).chain(ranked.into_iter().map(|(w, _)| w)).collect();
        WordVocab::from_words(words)
    }

    fn from_words(words: Vec<String>) -> WordVocab {
        let index = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        WordVocab { words, index }
    }
}

/// The scratch tower's tokenizer.
pub enum TextTokenizer {
    Words(WordVocab),
    HuggingFace(Box<tokenizers::Tokenizer>),
}

impl TextTokenizer {
    /// A tokenizer.json file.
    pub fn from_file(path: &Path) -> anyhow::Result<TextTokenizer> {
        let tok = tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow!("{}: not a tokenizer.json: {e}", path.display()))?;
        Ok(TextTokenizer::HuggingFace(Box::new(tok)))
    }

    /// What training saved: a word vocabulary (`{"words": [...]}`) or a tokenizer.json.
    pub fn load(path: &Path) -> anyhow::Result<TextTokenizer> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if let Ok(vocab) = serde_json::from_slice::<WordVocab>(&bytes) {
            return Ok(TextTokenizer::Words(WordVocab::from_words(vocab.words)));
        }
        Self::from_file(path)
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Words(v) => v.words.len(),
            TextTokenizer::HuggingFace(t) => t.get_vocab_size(true),
        }
    }

    /// Ids of `text`, at most `context` long, the last one the pooling position.
    pub fn encode(&self, text: &str, context: usize) -> anyhow::Result<Vec<u32>> {
        let mut ids = match self {
            TextTokenizer::Words(v) => {
                let mut ids = vec![SOS];
                ids.extend(words(text).iter().map(|w| v.index.get(w).copied().unwrap_or(UNK)));
                ids.push(EOS);
                ids
            }
            TextTokenizer::HuggingFace(t) => t.encode(text, true).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?.get_ids().to_vec(),
        };
        if ids.is_empty() {
            ids.push(PAD);
        }
        if ids.len() > context {
            let last = *ids.last().expect("not empty");
            ids.truncate(context - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// Writes the tokenizer for evaluation; returns the artifact name used.
    pub fn save(&self, dir_file: impl FnOnce(&str) -> anyhow::Result<std::path::PathBuf>) -> anyhow::Result<()> {
        match self {
            TextTokenizer::Words(v) => {
                let path = dir_file("vocab.json")?;
                std::fs::write(&path, serde_json::to_vec(v)?).with_context(|| format!("writing {}", path.display()))
            }
            TextTokenizer::HuggingFace(t) => {
                let path = dir_file("tokenizer.json")?;
                t.save(&path, false).map_err(|e| anyhow!("writing {}: {e}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_vocabulary_is_deterministic_and_wraps_with_sos_eos() {
        let v = WordVocab::build(["a red cube left of a blue ball.", "a blue cube"]);
        assert_eq!(&v.words[..6], &["<pad>", "<unk>", "<sos>", "<eos>", "a", "blue"]);
        let tok = TextTokenizer::Words(v);
        let ids = tok.encode("A blue sphere.", 16).unwrap();
        assert_eq!(ids.first(), Some(&SOS));
        assert_eq!(ids.last(), Some(&EOS));
        assert!(ids.contains(&UNK));
        let cut = tok.encode("a a a a a a a a", 4).unwrap();
        assert_eq!(cut.len(), 4);
        assert_eq!(cut.last(), Some(&EOS));
    }
}
