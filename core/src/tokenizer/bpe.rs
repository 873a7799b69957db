//! Byte-level BPE (GPT-2 style) as llama.cpp's `llm_tokenizer_bpe_session`: a pre-token's bytes
//! start as one symbol each, and the adjacent pair with the lowest merge rank (leftmost on ties)
//! is merged until no ranked pair is left.

use super::byte_level;
use super::vocab::Vocab;
use crate::error::{Error, Result};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

/// Symbol id of a byte whose character is not in the vocabulary: it never merges.
const NO_SYMBOL: u32 = u32::MAX;
/// Words cached before the cache is emptied (bounds memory on endless streams of new words).
const CACHE_LIMIT: usize = 1 << 18;
/// Longest word kept in the cache, bytes.
const CACHED_WORD_BYTES: usize = 64;

/// The merge table and per-word cache of one byte-level BPE vocabulary.
pub(crate) struct Bpe {
    /// `(left, right)` symbol ids -> `(rank, merged symbol id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Texts of merge results that are not tokens; their ids follow the vocabulary's.
    extra_texts: Vec<String>,
    /// Symbol id of each byte's one-character token.
    byte_ids: [u32; 256],
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl Bpe {
    /// Builds the merge table from `tokenizer.ggml.merges` lines (`"left right"`, rank = index).
    pub fn new(vocab: &Vocab, merges: &[&str]) -> Result<Self> {
        let n_vocab = vocab.len() as u32;
        let mut extra_texts: Vec<String> = Vec::new();
        let mut extra_ids: HashMap<String, u32> = HashMap::new();
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, line) in merges.iter().enumerate() {
            // As llama.cpp: split at the first space after the first byte, so " x" pairs work.
            let split = line
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    Error::model_loading(format!(
                        "tokenizer.ggml.merges[{rank}] = {line:?}: expected \"left right\""
                    ))
                })?;
            let (left, right) = (&line[..split], &line[split + 1..]);
            let lookup = |text: &str| vocab.id(text).or_else(|| extra_ids.get(text).copied());
            let (Some(l), Some(r)) = (lookup(left), lookup(right)) else {
                return Err(Error::model_loading(format!(
                    "tokenizer.ggml.merges[{rank}] = {line:?} refers to a token that is not in \
                     the vocabulary"
                )));
            };
            let merged_text = format!("{left}{right}");
            let merged = match vocab.id(&merged_text) {
                Some(id) => id,
                None => *extra_ids.entry(merged_text.clone()).or_insert_with(|| {
                    extra_texts.push(merged_text);
                    n_vocab + extra_texts.len() as u32 - 1
                }),
            };
            table.entry((l, r)).or_insert((rank as u32, merged));
        }
        let mut byte_ids = [NO_SYMBOL; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            *id = vocab
                .id(byte_level::byte_char(b as u8).encode_utf8(&mut [0; 4]))
                .unwrap_or(NO_SYMBOL);
        }
        Ok(Bpe {
            merges: table,
            extra_texts,
            byte_ids,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Appends the tokens of one pre-token to `out`.
    pub fn encode_word(&self, vocab: &Vocab, word: &str, ignore_merges: bool, out: &mut Vec<u32>) {
        if let Ok(cache) = self.cache.lock() {
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let mut ids = Vec::new();
        self.merge_word(vocab, word, ignore_merges, &mut ids);
        out.extend_from_slice(&ids);
        // Only words of ordinary length are cached: one long word per request would otherwise
        // let a client fill the cache with megabytes per entry.
        if word.len() > CACHED_WORD_BYTES {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(word.to_owned(), ids);
        }
    }

    fn merge_word(&self, vocab: &Vocab, word: &str, ignore_merges: bool, out: &mut Vec<u32>) {
        if ignore_merges {
            let mut encoded = String::with_capacity(word.len() * 2);
            byte_level::encode_into(word, &mut encoded);
            if let Some(id) = vocab.id(&encoded) {
                out.push(id);
                return;
            }
        }
        let bytes = word.as_bytes();
        let n = bytes.len();
        // Doubly linked list of symbols; `len == 0` marks a symbol merged into its left neighbour.
        let mut ids: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut lens = vec![1u32; n];
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, ids: &[u32], l: usize, r: usize| {
            if let Some(&(rank, merged)) = self.merges.get(&(ids[l], ids[r])) {
                heap.push(Reverse((rank, l, r, ids[l], ids[r], merged)));
            }
        };
        for i in 1..n {
            push(&mut heap, &ids, i - 1, i);
        }
        while let Some(Reverse((_, l, r, lid, rid, merged))) = heap.pop() {
            // Stale when either side has changed since the pair was queued.
            if lens[l] == 0 || lens[r] == 0 || ids[l] != lid || ids[r] != rid {
                continue;
            }
            ids[l] = merged;
            lens[l] += lens[r];
            lens[r] = 0;
            next[l] = next[r];
            if next[r] < n {
                prev[next[r]] = l;
            }
            if prev[l] < n {
                push(&mut heap, &ids, prev[l], l);
            }
            if next[l] < n {
                push(&mut heap, &ids, l, next[l]);
            }
        }
        let mut i = 0;
        while i < n {
            self.emit(vocab, ids[i], out);
            i = next[i];
        }
    }

    /// Pushes a final symbol: the token itself, or (for merge results that are not tokens) the
    /// single-byte tokens of its text, as llama.cpp does.
    fn emit(&self, vocab: &Vocab, id: u32, out: &mut Vec<u32>) {
        if (id as usize) < vocab.len() {
            out.push(id);
            return;
        }
        let Some(text) = self
            .extra_texts
            .get((id as usize).wrapping_sub(vocab.len()))
        else {
            return;
        };
        for b in text.bytes().filter(u8::is_ascii) {
            if let Some(t) = vocab.id(std::str::from_utf8(&[b]).unwrap_or_default()) {
                out.push(t);
            }
        }
    }
}
