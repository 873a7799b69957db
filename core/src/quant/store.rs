//! Weight stores: matrices an adapter quantized on an earlier load of the same file with the
//! same plan, handed back so a reload skips quantization (a browser keeps them in Cache
//! Storage), and the matrices a load made, kept to be stored. [`WeightStore::to_bytes`] and
//! [`WeightStore::from_bytes`] are their file format: `LBWS`, a version, then each matrix by
//! key (`name|rows x cols|precision`) with its format and arrays, little-endian. Reading
//! checks every length, so a damaged blob is an error, never a wrong model.

use super::{Grid, QuantSpec, QuantizedMatrix, Rotation, Scheme};
use crate::backend::WeightMatrix;
use crate::error::{Error, Result};
use half::f16;
use std::collections::HashMap;

const MAGIC: &[u8; 4] = b"LBWS";
const VERSION: u32 = 1;

/// Matrices by key: those given at the start (from an earlier load) and those made since.
#[derive(Default)]
pub struct WeightStore {
    given: HashMap<String, WeightMatrix>,
    made: Vec<(String, WeightMatrix)>,
    /// Matrices taken from the store.
    pub hits: usize,
    /// Matrices that had to be made.
    pub misses: usize,
    /// Keep what is made (for [`WeightStore::to_bytes`]).
    pub record: bool,
    /// Match given matrices by name and shape alone, whatever precision a load asks for (a
    /// quantized model file: its matrices are the model).
    pub by_name: bool,
}

/// `name|rows x cols` of a key (the part [`WeightStore::by_name`] matches).
fn name_part(key: &str) -> &str {
    match key.match_indices('|').nth(1) {
        Some((i, _)) => &key[..i],
        None => key,
    }
}

impl WeightStore {
    /// The key of matrix `name` of `rows × cols` in precision `label` (e.g. `int4-g32-asym`).
    pub fn key(name: &str, rows: usize, cols: usize, label: &str) -> String {
        format!("{name}|{rows}x{cols}|{label}")
    }

    /// A store that records what a load makes.
    pub fn recording() -> Self {
        WeightStore {
            record: true,
            ..Default::default()
        }
    }

    /// Takes the matrix under `key`, if the store was given one of that shape.
    pub fn take(&mut self, key: &str, rows: usize, cols: usize) -> Option<WeightMatrix> {
        let key = if self.by_name { name_part(key) } else { key };
        if self.given.get(key)?.shape() != (rows, cols) {
            return None;
        }
        self.hits += 1;
        self.given.remove(key)
    }

    /// A store whose matrices are matched by name and shape alone (see
    /// [`WeightStore::by_name`]); `from_bytes`' errors.
    pub fn from_bytes_by_name(bytes: &[u8]) -> Result<Self> {
        let mut s = Self::from_bytes(bytes)?;
        s.given = s
            .given
            .into_iter()
            .map(|(k, w)| (name_part(&k).to_string(), w))
            .collect();
        s.by_name = true;
        Ok(s)
    }

    /// The matrices made since the start, with their keys.
    pub fn made(&self) -> &[(String, WeightMatrix)] {
        &self.made
    }

    /// Notes a matrix that was made (kept when recording).
    pub fn keep(&mut self, key: String, w: &WeightMatrix) {
        self.misses += 1;
        if self.record {
            self.made.push((key, w.clone()));
        }
    }

    /// Whether the last load made matrices the store did not hold (so it is worth storing).
    pub fn changed(&self) -> bool {
        !self.made.is_empty()
    }

    /// The store's matrices as bytes: those made and those given but not taken.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, VERSION);
        let all: Vec<(&String, &WeightMatrix)> = self
            .made
            .iter()
            .map(|(k, w)| (k, w))
            .chain(self.given.iter())
            .collect();
        put_u64(&mut out, all.len() as u64);
        for (key, w) in all {
            put_u64(&mut out, key.len() as u64);
            out.extend_from_slice(key.as_bytes());
            let (rows, cols) = w.shape();
            match w {
                WeightMatrix::F32 { data, .. } => {
                    out.push(0);
                    put_u64(&mut out, rows as u64);
                    put_u64(&mut out, cols as u64);
                    put_u64(&mut out, data.len() as u64);
                    data.iter()
                        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
                }
                WeightMatrix::F16 { data, .. } => {
                    out.push(1);
                    put_u64(&mut out, rows as u64);
                    put_u64(&mut out, cols as u64);
                    put_halves(&mut out, data);
                }
                WeightMatrix::Quantized(q) => {
                    // Kind 3 is kind 2 followed by the rotation (block, seed); kind 4 is kind 2
                    // followed by a rotation flag byte (then the rotation when 1) and the grid
                    // (level count, then the int8 levels).
                    out.push(match (&q.grid, q.rotation) {
                        (Some(_), _) => 4,
                        (None, Some(_)) => 3,
                        (None, None) => 2,
                    });
                    put_u64(&mut out, rows as u64);
                    put_u64(&mut out, cols as u64);
                    out.push(q.spec.bits);
                    put_u64(&mut out, q.spec.group_size as u64);
                    out.push(u8::from(q.spec.scheme == Scheme::Asymmetric));
                    put_u64(&mut out, q.data.len() as u64);
                    q.data
                        .iter()
                        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
                    put_halves(&mut out, &q.scales);
                    put_halves(&mut out, &q.offsets);
                    if q.grid.is_some() {
                        out.push(u8::from(q.rotation.is_some()));
                    }
                    if let Some(rot) = q.rotation {
                        put_u64(&mut out, rot.block as u64);
                        put_u64(&mut out, rot.seed);
                    }
                    if let Some(g) = &q.grid {
                        out.push(g.levels().len() as u8);
                        out.extend(g.levels().iter().map(|&l| l as u8));
                    }
                }
            }
        }
        out
    }

    /// Reads [`WeightStore::to_bytes`]'s format.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for another format or version, a truncated blob, or a
    /// matrix whose arrays do not fit its shape and format.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(bad("not a weight store (no LBWS magic)"));
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(bad(format!(
                "weight store version {version}, expected {VERSION}"
            )));
        }
        let n = r.len()?;
        let mut given = HashMap::new();
        for _ in 0..n {
            let klen = r.len()?;
            let key =
                String::from_utf8(r.take(klen)?.to_vec()).map_err(|_| bad("a key is not UTF-8"))?;
            let kind = r.take(1)?[0];
            let rows = r.size()?;
            let cols = r.size()?;
            let values = rows
                .checked_mul(cols)
                .ok_or_else(|| bad(format!("{key}: {rows} x {cols} overflows")))?;
            let w = match kind {
                0 => {
                    let len = r.len()?;
                    if len != values {
                        return Err(bad(format!("{key}: {len} values for {rows} x {cols}")));
                    }
                    let data = r
                        .take(len.checked_mul(4).ok_or_else(|| bad("length overflows"))?)?
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    WeightMatrix::F32 { rows, cols, data }
                }
                1 => {
                    let data = r.halves()?;
                    if data.len() != values {
                        return Err(bad(format!(
                            "{key}: {} values for {rows} x {cols}",
                            data.len()
                        )));
                    }
                    WeightMatrix::F16 { rows, cols, data }
                }
                2..=4 => {
                    let bits = r.take(1)?[0];
                    let group_size = r.size()?;
                    let scheme = if r.take(1)?[0] == 1 {
                        Scheme::Asymmetric
                    } else {
                        Scheme::Symmetric
                    };
                    let spec = QuantSpec::new(bits, group_size, scheme)
                        .map_err(|e| bad(format!("{key}: {}", e.message)))?;
                    let words = r.len()?;
                    let data = r
                        .take(
                            words
                                .checked_mul(4)
                                .ok_or_else(|| bad("length overflows"))?,
                        )?
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    let scales = r.halves()?;
                    let offsets = r.halves()?;
                    let rotated = match kind {
                        3 => true,
                        4 => match r.take(1)?[0] {
                            0 => false,
                            1 => true,
                            f => return Err(bad(format!("{key}: rotation flag {f}"))),
                        },
                        _ => false,
                    };
                    let rotation = if rotated {
                        let rot = Rotation {
                            block: r.size()?,
                            seed: r.u64()?,
                        };
                        rot.check(cols)
                            .map_err(|e| bad(format!("{key}: {}", e.message)))?;
                        Some(rot)
                    } else {
                        None
                    };
                    let grid = if kind == 4 {
                        let n = usize::from(r.take(1)?[0]);
                        let levels = r.take(n)?.iter().map(|&b| b as i8).collect();
                        Some(
                            Grid::new(bits, levels)
                                .map_err(|e| bad(format!("{key}: {}", e.message)))?,
                        )
                    } else {
                        None
                    };
                    if cols % 32 != 0 || cols.checked_mul(8).is_none() {
                        return Err(bad(format!(
                            "{key}: {cols} columns (a quantized matrix has a multiple of 32)"
                        )));
                    }
                    let q = QuantizedMatrix {
                        rows,
                        cols,
                        spec,
                        data,
                        scales,
                        offsets,
                        rotation,
                        grid,
                    };
                    let groups = rows
                        .checked_mul(q.groups_per_row())
                        .ok_or_else(|| bad("length overflows"))?;
                    let want_words = rows.checked_mul(q.row_words());
                    let want_offsets = if scheme == Scheme::Asymmetric {
                        groups
                    } else {
                        0
                    };
                    if cols % 32 != 0
                        || Some(q.data.len()) != want_words
                        || q.scales.len() != groups
                        || q.offsets.len() != want_offsets
                    {
                        return Err(bad(format!(
                            "{key}: arrays do not fit {rows} x {cols} at {bits} bits"
                        )));
                    }
                    WeightMatrix::Quantized(q)
                }
                k => return Err(bad(format!("{key}: unknown matrix kind {k}"))),
            };
            given.insert(key, w);
        }
        if r.at != bytes.len() {
            return Err(bad("bytes after the last matrix"));
        }
        Ok(WeightStore {
            given,
            ..Default::default()
        })
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::model_loading(format!("weight store: {}", msg.into()))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_halves(out: &mut Vec<u8>, v: &[f16]) {
    put_u64(out, v.len() as u64);
    v.iter()
        .for_each(|h| out.extend_from_slice(&h.to_le_bytes()));
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes([
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        ]))
    }

    /// A dimension (rows, columns, group size): any value that fits a `usize`; what is
    /// allocated is bounded by the array lengths ([`Reader::len`]).
    fn size(&mut self) -> Result<usize> {
        let s = self.take(8)?;
        let v = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        usize::try_from(v).map_err(|_| bad(format!("size {v} does not fit this machine")))
    }

    /// A length, which must fit what is left of the blob (so no allocation exceeds it).
    fn len(&mut self) -> Result<usize> {
        let s = self.take(8)?;
        let v = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= self.b.len())
            .ok_or_else(|| bad(format!("length {v} exceeds the blob")))
    }

    fn halves(&mut self) -> Result<Vec<f16>> {
        let n = self.len()?;
        Ok(self
            .take(n.checked_mul(2).ok_or_else(|| bad("length overflows"))?)?
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize;

    fn sample() -> Vec<(String, WeightMatrix)> {
        let data: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut out = Vec::new();
        for (bits, scheme) in [
            (4, Scheme::Asymmetric),
            (2, Scheme::Symmetric),
            (3, Scheme::Asymmetric),
        ] {
            let spec = QuantSpec::new(bits, 32, scheme).unwrap();
            out.push((
                format!("q{bits}"),
                WeightMatrix::Quantized(quantize(&data, 4, 64, spec).unwrap()),
            ));
        }
        let mut rotated = quantize(
            &data,
            4,
            64,
            QuantSpec::new(2, 32, Scheme::Symmetric).unwrap(),
        )
        .unwrap();
        rotated.rotation = Some(Rotation { block: 64, seed: 9 });
        out.push(("q2-rotated".into(), WeightMatrix::Quantized(rotated)));
        for (rot, scheme) in [(None, Scheme::Symmetric), (Some(64), Scheme::Asymmetric)] {
            let spec = QuantSpec::new(3, 32, scheme).unwrap();
            let grid = crate::quant::learn_grid(&data, 4, 64, &spec, &|_, o| o.fill(1.0));
            let mut q =
                crate::quant::quantize_on_grid(&data, 4, 64, spec, None, Some(&grid)).unwrap();
            q.rotation = rot.map(|block| Rotation { block, seed: 3 });
            out.push((format!("q3-grid-{rot:?}"), WeightMatrix::Quantized(q)));
        }
        out.push((
            "f32".into(),
            WeightMatrix::F32 {
                rows: 4,
                cols: 64,
                data: data.clone(),
            },
        ));
        out.push((
            "f16".into(),
            WeightMatrix::F16 {
                rows: 4,
                cols: 64,
                data: data.iter().map(|&v| f16::from_f32(v)).collect(),
            },
        ));
        out
    }

    #[test]
    fn round_trips_every_kind_and_counts_hits() {
        let mut s = WeightStore::recording();
        for (k, w) in sample() {
            assert!(s.take(&k, 4, 64).is_none());
            s.keep(k, &w);
        }
        assert!(s.changed());
        let bytes = s.to_bytes();
        let mut back = WeightStore::from_bytes(&bytes).unwrap();
        for (k, w) in sample() {
            assert!(back.take(&k, 5, 64).is_none(), "another shape is not a hit");
            let got = back.take(&k, 4, 64).expect("stored");
            assert_eq!(format!("{got:?}"), format!("{w:?}"), "{k}");
        }
        assert_eq!(back.hits, 8);
        assert!(!back.changed());
    }

    #[test]
    fn damaged_blobs_are_errors() {
        let mut s = WeightStore::recording();
        for (k, w) in sample() {
            s.keep(k, &w);
        }
        let bytes = s.to_bytes();
        for cut in [0, 3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            let e = WeightStore::from_bytes(&bytes[..cut])
                .err()
                .expect("truncated");
            assert_eq!(e.code, crate::ErrorCode::ModelLoadingFailed);
        }
        // A grid whose levels are not increasing is damage too.
        let mut s = WeightStore::recording();
        let (k, w) = sample().swap_remove(4);
        s.keep(k, &w);
        let mut b = s.to_bytes();
        let n = b.len();
        b[n - 1] = b[n - 2];
        let e = WeightStore::from_bytes(&b).err().expect("bad grid");
        assert_eq!(e.code, crate::ErrorCode::ModelLoadingFailed);
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(WeightStore::from_bytes(&extra).is_err());
        // Flipping any single byte gives an error or a store that still reads: never a panic.
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = WeightStore::from_bytes(&b);
        }
    }
}
