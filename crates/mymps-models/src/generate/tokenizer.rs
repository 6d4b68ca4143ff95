//! A model directory's tokenizer: `tokenizer.json` read by Hugging Face's
//! `tokenizers` crate (the library behind transformers' fast tokenizers),
//! the pad token of `tokenizer_config.json`, and incremental decoding that
//! never splits a character.

use std::path::Path;

use mymps_core::{Error, Result};
use serde_json::Value as Json;

use crate::convert::{clip, model_error};

/// The largest `tokenizer.json` read (64 MiB; real ones take up to some
/// 35 MiB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// The largest `tokenizer_config.json` read (16 MiB; real ones take a few
/// KiB, up to a MiB with long chat templates).
pub const MAX_TOKENIZER_CONFIG_BYTES: u64 = 16 << 20;

/// The longest text encoded at once (16 MiB).
pub const MAX_TEXT_BYTES: usize = 16 << 20;

/// A tokenizer and the special tokens transformers' tokenizer reads
/// beside it.
pub(crate) struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The pad token's id (`tokenizer_config.json`'s `pad_token`), if any.
    pad: Option<i64>,
    /// Ids the tokenizer knows (added tokens included).
    vocab: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.vocab)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

fn tok_error(what: &str, e: impl std::fmt::Display) -> Error {
    model_error(format!("{what}: {}", clip(&e.to_string())))
}

/// A token of `tokenizer_config.json`: a string or an `AddedToken` object
/// (`{"content": ...}`).
fn token_text(v: &Json) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Json::as_str))
}

impl TextTokenizer {
    /// Reads `tokenizer_json` (and, when given, `tokenizer_config`: its
    /// `pad_token`). `read` reads a file with a size limit.
    pub fn load(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        read: impl Fn(&Path, u64) -> Result<String>,
    ) -> Result<TextTokenizer> {
        let text = read(tokenizer_json, MAX_TOKENIZER_BYTES)?;
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| tok_error("tokenizer.json cannot be read", e))?;
        let vocab = inner.get_vocab_size(true);
        let mut pad = None;
        if let Some(p) = tokenizer_config {
            let json: Json = serde_json::from_str(&read(p, MAX_TOKENIZER_CONFIG_BYTES)?)
                .map_err(|e| tok_error("tokenizer_config.json is not JSON", e))?;
            if let Some(t) = json.get("pad_token").and_then(token_text) {
                pad = inner.token_to_id(t).map(i64::from);
            }
        }
        Ok(TextTokenizer { inner, pad, vocab })
    }

    /// The pad token's id, if the tokenizer has one.
    pub fn pad(&self) -> Option<i64> {
        self.pad
    }

    /// How many ids it knows (added tokens included).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// `text` as ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(Error::bad_argument(format!(
                "the text has {} bytes, more than the {MAX_TEXT_BYTES} encoded at once",
                text.len()
            )));
        }
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::bad_argument(format!("cannot encode the text: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Ids as `u32`, each one the tokenizer knows.
    fn ids(&self, ids: &[i64]) -> Result<Vec<u32>> {
        ids.iter()
            .map(|&i| {
                u32::try_from(i)
                    .ok()
                    .filter(|&u| (u as usize) < self.vocab)
                    .ok_or_else(|| {
                        Error::bad_argument(format!(
                            "token id {i} is outside the tokenizer's vocabulary [0, {})",
                            self.vocab
                        ))
                    })
            })
            .collect()
    }

    /// Ids as text.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids = self.ids(ids)?;
        self.decode_u32(&ids, skip_special_tokens)
    }

    fn decode_u32(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_error("cannot decode", e))
    }
}

/// Decodes one sequence a token at a time, as text-generation-inference
/// does: the text of a new token is the decoding of a short window of the
/// last ids minus the decoding of that window without it, held back while
/// it ends in an incomplete character (U+FFFD), so that a character whose
/// bytes span several tokens comes whole, and spaces that depend on the
/// neighbours (SentencePiece's `▁`) come right. Each step decodes a few
/// ids, never the whole sequence.
#[derive(Debug, Default)]
pub(crate) struct TextStream {
    ids: Vec<u32>,
    /// Start of the window: ids before it are done with.
    prefix: usize,
    /// Ids before this one have been turned into text.
    read: usize,
    /// Everything emitted so far.
    text: String,
}

impl TextStream {
    /// Adds `id` and returns the text it completes (possibly empty). An
    /// id the tokenizer does not know (a model's vocabulary may be padded
    /// beyond its tokenizer's) has no text.
    pub fn push(&mut self, tok: &TextTokenizer, id: i64, skip_special: bool) -> Result<String> {
        match u32::try_from(id) {
            Ok(u) if (u as usize) < tok.vocab => self.ids.push(u),
            _ => return Ok(String::new()),
        }
        let before = tok.decode_u32(&self.ids[self.prefix..self.read], skip_special)?;
        let after = tok.decode_u32(&self.ids[self.prefix..], skip_special)?;
        if after.len() > before.len()
            && !after.ends_with('\u{FFFD}')
            && after.is_char_boundary(before.len())
        {
            let piece = after[before.len()..].to_owned();
            self.prefix = self.read;
            self.read = self.ids.len();
            self.text.push_str(&piece);
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// At the sequence's end: whatever the whole decoding has beyond the
    /// text emitted (a character left incomplete, shown as U+FFFD), so that
    /// the pieces add up to the decoding of every id.
    pub fn finish(&mut self, tok: &TextTokenizer, skip_special: bool) -> Result<String> {
        let all = tok.decode_u32(&self.ids, skip_special)?;
        let rest = match all.strip_prefix(self.text.as_str()) {
            Some(rest) => rest.to_owned(),
            None => String::new(),
        };
        self.text.push_str(&rest);
        Ok(rest)
    }

    /// The text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}
