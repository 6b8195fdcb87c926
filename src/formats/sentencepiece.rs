//! SentencePiece `tokenizer.model` files (a protobuf `ModelProto`): the pieces with their
//! scores and types, and the normalizer's `add_dummy_prefix`. Read by hand: three fields of
//! three messages do not justify a protobuf code generator, and every length is checked
//! against the file, so a hostile file is an error, never a panic or a huge allocation.

use crate::error::{Error, Result};

/// What qforge needs of a `tokenizer.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    /// (piece, score, type) in id order; the types are llama.cpp's token types (the same numbers).
    pub pieces: Vec<(String, f32, i32)>,
    /// `normalizer_spec.add_dummy_prefix` (default true): a space is put before the text.
    pub add_dummy_prefix: bool,
    /// `trainer_spec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char (default 1).
    pub model_type: i32,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str) -> Error {
        Error::Tokenizer(format!("tokenizer.model: {what} at byte {}", self.at))
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or_else(|| self.bad("truncated varint"))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| self.bad("truncated field"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next (field number, value), or None at the end.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.at == self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| self.bad("absurd length"))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(self.bad(&format!("unsupported wire type {w}"))),
        };
        Ok(Some((key >> 3, value)))
    }
}

impl SentencePieceModel {
    pub fn parse(bytes: &[u8]) -> Result<SentencePieceModel> {
        let mut m = SentencePieceModel { pieces: Vec::new(), add_dummy_prefix: true, model_type: 1 };
        let mut r = Reader { b: bytes, at: 0 };
        while let Some((num, f)) = r.field()? {
            match (num, f) {
                (1, Field::Bytes(p)) => m.pieces.push(piece(p)?),
                (2, Field::Bytes(t)) => {
                    let mut t = Reader { b: t, at: 0 };
                    while let Some((n, f)) = t.field()? {
                        if let (3, Field::Varint(v)) = (n, f) {
                            m.model_type = v as i32;
                        }
                    }
                }
                (3, Field::Bytes(n)) => {
                    let mut n = Reader { b: n, at: 0 };
                    while let Some((k, f)) = n.field()? {
                        if let (3, Field::Varint(v)) = (k, f) {
                            m.add_dummy_prefix = v != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(Error::Tokenizer("tokenizer.model holds no pieces (not a SentencePiece model?)".into()));
        }
        Ok(m)
    }
}

/// What `tokenizer.model` needs besides the pieces: the special ids SentencePiece checks
/// against the piece types when it loads a model (-1: none).
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub unk: i64,
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
}

impl SentencePieceModel {
    /// The protobuf bytes of this model: a BPE model with byte fallback and the identity
    /// normalizer (llama.cpp's tokenizer: no NFKC), as the `sentencepiece` package reads them.
    pub fn to_bytes(&self, ids: SpecialIds) -> Vec<u8> {
        let mut file = Vec::new();
        for (text, score, ty) in &self.pieces {
            let mut p = Vec::new();
            bytes_field(1, text.as_bytes(), &mut p);
            p.push(2 << 3 | 5);
            p.extend_from_slice(&score.to_le_bytes());
            varint_field(3, *ty as i64, &mut p);
            bytes_field(1, &p, &mut file);
        }
        let mut trainer = Vec::new();
        varint_field(3, self.model_type as i64, &mut trainer);
        varint_field(4, self.pieces.len() as i64, &mut trainer);
        varint_field(35, 1, &mut trainer); // byte_fallback
        for (num, id) in [(40, ids.unk), (41, ids.bos), (42, ids.eos), (43, ids.pad)] {
            varint_field(num, id, &mut trainer);
        }
        bytes_field(2, &trainer, &mut file);
        let mut normalizer = Vec::new();
        bytes_field(1, b"identity", &mut normalizer);
        varint_field(3, self.add_dummy_prefix as i64, &mut normalizer);
        varint_field(4, 0, &mut normalizer); // remove_extra_whitespaces
        varint_field(5, 1, &mut normalizer); // escape_whitespaces
        bytes_field(3, &normalizer, &mut file);
        file
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field; negative int32 values are written as protobuf does (10 bytes).
fn varint_field(num: u64, v: i64, out: &mut Vec<u8>) {
    varint(num << 3, out);
    varint(v as u64, out);
}

fn bytes_field(num: u64, body: &[u8], out: &mut Vec<u8>) {
    varint(num << 3 | 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// One `SentencePiece` message: piece (1), score (2), type (3, default NORMAL).
fn piece(b: &[u8]) -> Result<(String, f32, i32)> {
    let mut r = Reader { b, at: 0 };
    let (mut text, mut score, mut ty) = (None, 0f32, 1i32);
    while let Some((num, f)) = r.field()? {
        match (num, f) {
            (1, Field::Bytes(s)) => {
                text = Some(
                    String::from_utf8(s.to_vec())
                        .map_err(|_| Error::Tokenizer("tokenizer.model: a piece is not UTF-8".into()))?,
                )
            }
            (2, Field::Fixed32(v)) => score = f32::from_bits(v),
            (3, Field::Varint(v)) => ty = i32::try_from(v).unwrap_or(0),
            _ => {}
        }
    }
    let text = text.ok_or_else(|| Error::Tokenizer("tokenizer.model: a piece without text".into()))?;
    Ok((text, score, ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pieces_and_specs_and_refuses_garbage() {
        let mut file = Vec::new();
        for (t, s, ty) in [("<unk>", 0.0f32, 2u64), ("\u{2581}a", -1.5, 1), ("<0x0A>", 0.0, 6)] {
            let mut p = Vec::new();
            bytes_field(1, t.as_bytes(), &mut p);
            p.push(2 << 3 | 5);
            p.extend_from_slice(&s.to_le_bytes());
            varint(3 << 3, &mut p);
            varint(ty, &mut p);
            bytes_field(1, &p, &mut file);
        }
        bytes_field(2, &[3 << 3, 2], &mut file); // trainer_spec.model_type = BPE
        bytes_field(3, &[3 << 3, 0], &mut file); // normalizer_spec.add_dummy_prefix = false
        let m = SentencePieceModel::parse(&file).unwrap();
        assert_eq!(m.pieces, vec![("<unk>".into(), 0.0, 2), ("\u{2581}a".into(), -1.5, 1), ("<0x0A>".into(), 0.0, 6)]);
        assert_eq!((m.model_type, m.add_dummy_prefix), (2, false));
        for cut in 0..file.len() {
            let _ = SentencePieceModel::parse(&file[..cut]); // never panics
        }
        assert!(SentencePieceModel::parse(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(SentencePieceModel::parse(b"").is_err());
        // What qforge writes reads back the same.
        let ids = SpecialIds { unk: 0, bos: -1, eos: 2, pad: -1 };
        assert_eq!(SentencePieceModel::parse(&m.to_bytes(ids)).unwrap(), m);
    }
}
