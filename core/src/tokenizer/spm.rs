//! SentencePiece-style tokenization as llama.cpp's `llm_tokenizer_spm_session`: characters start
//! as symbols, and the adjacent pair whose concatenation is the highest-scoring token is merged
//! until no pair forms a token; what is left unknown falls back to `<0xXX>` byte tokens.

use super::vocab::Vocab;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The escaped space SentencePiece stores in token texts.
pub(crate) const SPACE: &str = "\u{2581}";

/// A candidate merge of two adjacent symbols.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first; on ties the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Appends the tokens of `text` (spaces already escaped to `▁`) to `out`.
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    // Symbols: byte ranges of the text's characters, linked in order.
    let start: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let n = start.len();
    let mut len: Vec<usize> = (0..n)
        .map(|i| start.get(i + 1).copied().unwrap_or(text.len()) - start[i])
        .collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut heap = BinaryHeap::new();
    let mut rev_merge: HashMap<&str, (usize, usize)> = HashMap::new();

    for i in 1..n {
        try_add(
            vocab,
            text,
            &mut heap,
            &mut rev_merge,
            &start,
            &len,
            i - 1,
            i,
        );
    }
    while let Some(b) = heap.pop() {
        if len[b.left] == 0 || len[b.right] == 0 || len[b.left] + len[b.right] != b.size {
            continue;
        }
        len[b.left] += len[b.right];
        len[b.right] = 0;
        next[b.left] = next[b.right];
        if next[b.right] < n {
            prev[next[b.right]] = b.left;
        }
        if prev[b.left] < n {
            try_add(
                vocab,
                text,
                &mut heap,
                &mut rev_merge,
                &start,
                &len,
                prev[b.left],
                b.left,
            );
        }
        if next[b.left] < n {
            try_add(
                vocab,
                text,
                &mut heap,
                &mut rev_merge,
                &start,
                &len,
                b.left,
                next[b.left],
            );
        }
    }
    let mut i = 0;
    while i < n {
        resegment(vocab, text, &start, &len, &rev_merge, i, out);
        i = next[i];
    }
}

/// Queues the merge of two adjacent symbols when their concatenation is a token.
#[allow(clippy::too_many_arguments)]
fn try_add<'a>(
    vocab: &Vocab,
    text: &'a str,
    heap: &mut BinaryHeap<Bigram>,
    rev_merge: &mut HashMap<&'a str, (usize, usize)>,
    start: &[usize],
    len: &[usize],
    left: usize,
    right: usize,
) {
    let piece = &text[start[left]..start[left] + len[left] + len[right]];
    let Some(id) = vocab.id(piece) else {
        return;
    };
    heap.push(Bigram {
        left,
        right,
        score: vocab.scores[id as usize],
        size: piece.len(),
    });
    rev_merge.insert(piece, (left, right));
}

/// Emits one final symbol: its token, the tokens of the pair it was merged from, or its bytes.
fn resegment(
    vocab: &Vocab,
    text: &str,
    start: &[usize],
    len: &[usize],
    rev_merge: &HashMap<&str, (usize, usize)>,
    symbol: usize,
    out: &mut Vec<u32>,
) {
    // An explicit stack instead of recursion: right halves are pushed first so the left is
    // emitted first.
    let mut stack = vec![(start[symbol], len[symbol])];
    while let Some((s, l)) = stack.pop() {
        let piece = &text[s..s + l];
        if let Some(id) = vocab.id(piece) {
            out.push(id);
            continue;
        }
        match rev_merge.get(piece) {
            Some(&(left, right)) => {
                stack.push((start[right], len[right]));
                stack.push((start[left], len[left]));
            }
            None => {
                for b in piece.bytes() {
                    if let Some(id) = byte_token(vocab, b) {
                        out.push(id);
                    }
                }
            }
        }
    }
}

/// The `<0xXX>` token of a byte, else the one-byte text token, else UNK.
pub(crate) fn byte_token(vocab: &Vocab, b: u8) -> Option<u32> {
    vocab
        .id(&format!("<0x{b:02X}>"))
        .or_else(|| std::str::from_utf8(&[b]).ok().and_then(|s| vocab.id(s)))
        .or(vocab.unk)
}

/// Parses a `<0xXX>` byte-token text.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
