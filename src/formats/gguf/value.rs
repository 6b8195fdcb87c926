//! GGUF metadata values: the thirteen value types of the GGUF v3 spec, arrays included
//! (arrays may nest). Arrays are stored by element type ([`Array`]): a u8 array takes one
//! byte per element in memory as on disk, not a 32-byte [`Value`] each.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type occupies on disk; used to reject declared
    /// counts that the remaining bytes cannot hold before anything is allocated.
    pub fn min_encoded_len(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// gguf-py's spelling, used by `inspect`.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type that fits a u64 (negative values do not).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn string_array(items: impl IntoIterator<Item = String>) -> Value {
        Value::Array(Array::String(items.into_iter().collect()))
    }

    /// A JSON rendering for `inspect --json`; arrays longer than `max_items` are cut and
    /// marked with their full length.
    pub fn to_json(&self, max_items: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::U8(v) => json!(v),
            Value::I8(v) => json!(v),
            Value::U16(v) => json!(v),
            Value::I16(v) => json!(v),
            Value::U32(v) => json!(v),
            Value::I32(v) => json!(v),
            Value::U64(v) => json!(v),
            Value::I64(v) => json!(v),
            Value::F32(v) => json!(v),
            Value::F64(v) => json!(v),
            Value::Bool(v) => json!(v),
            Value::String(s) => json!(s),
            Value::Array(a) => {
                if a.len() <= max_items {
                    serde_json::Value::Array(a.iter().map(|v| v.to_json(max_items)).collect())
                } else {
                    json!({
                        "type": a.elem_type().name(),
                        "len": a.len(),
                        "head": a.iter().take(max_items).map(|v| v.to_json(max_items)).collect::<Vec<_>>(),
                    })
                }
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => {
                const SHOW: usize = 6;
                write!(f, "[{}; {}] [", a.elem_type().name(), a.len())?;
                for (i, v) in a.iter().take(SHOW).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len() > SHOW {
                    f.write_str(", ...")?;
                }
                f.write_str("]")
            }
            other => match other.to_json(0) {
                serde_json::Value::Number(n) => write!(f, "{n}"),
                v => write!(f, "{v}"),
            },
        }
    }
}

/// A metadata array, stored by element type: each element takes its own size in memory (a u8
/// one byte), so an array costs what it takes on disk plus a small constant. Arrays of arrays
/// hold one [`Array`] per element, each with its own element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// `$body` once per variant, with `$v` bound to its vector.
macro_rules! each_array {
    ($a:expr, $v:ident => $body:expr) => {
        match $a {
            Array::U8($v) => $body,
            Array::I8($v) => $body,
            Array::U16($v) => $body,
            Array::I16($v) => $body,
            Array::U32($v) => $body,
            Array::I32($v) => $body,
            Array::F32($v) => $body,
            Array::Bool($v) => $body,
            Array::String($v) => $body,
            Array::Array($v) => $body,
            Array::U64($v) => $body,
            Array::I64($v) => $body,
            Array::F64($v) => $body,
        }
    };
}

impl Array {
    /// An empty array of element type `t`.
    pub fn empty(t: ValueType) -> Array {
        match t {
            ValueType::U8 => Array::U8(Vec::new()),
            ValueType::I8 => Array::I8(Vec::new()),
            ValueType::U16 => Array::U16(Vec::new()),
            ValueType::I16 => Array::I16(Vec::new()),
            ValueType::U32 => Array::U32(Vec::new()),
            ValueType::I32 => Array::I32(Vec::new()),
            ValueType::F32 => Array::F32(Vec::new()),
            ValueType::Bool => Array::Bool(Vec::new()),
            ValueType::String => Array::String(Vec::new()),
            ValueType::Array => Array::Array(Vec::new()),
            ValueType::U64 => Array::U64(Vec::new()),
            ValueType::I64 => Array::I64(Vec::new()),
            ValueType::F64 => Array::F64(Vec::new()),
        }
    }

    /// An array of element type `t` from values of that type (`None` if one is not).
    pub fn from_values(t: ValueType, items: Vec<Value>) -> Option<Array> {
        let mut a = Array::empty(t);
        for v in items {
            match (&mut a, v) {
                (Array::U8(a), Value::U8(v)) => a.push(v),
                (Array::I8(a), Value::I8(v)) => a.push(v),
                (Array::U16(a), Value::U16(v)) => a.push(v),
                (Array::I16(a), Value::I16(v)) => a.push(v),
                (Array::U32(a), Value::U32(v)) => a.push(v),
                (Array::I32(a), Value::I32(v)) => a.push(v),
                (Array::F32(a), Value::F32(v)) => a.push(v),
                (Array::Bool(a), Value::Bool(v)) => a.push(v),
                (Array::String(a), Value::String(v)) => a.push(v),
                (Array::Array(a), Value::Array(v)) => a.push(v),
                (Array::U64(a), Value::U64(v)) => a.push(v),
                (Array::I64(a), Value::I64(v)) => a.push(v),
                (Array::F64(a), Value::F64(v)) => a.push(v),
                _ => return None,
            }
        }
        Some(a)
    }

    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        each_array!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (strings and nested arrays are cloned).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(a) => Value::U8(*a.get(i)?),
            Array::I8(a) => Value::I8(*a.get(i)?),
            Array::U16(a) => Value::U16(*a.get(i)?),
            Array::I16(a) => Value::I16(*a.get(i)?),
            Array::U32(a) => Value::U32(*a.get(i)?),
            Array::I32(a) => Value::I32(*a.get(i)?),
            Array::F32(a) => Value::F32(*a.get(i)?),
            Array::Bool(a) => Value::Bool(*a.get(i)?),
            Array::String(a) => Value::String(a.get(i)?.clone()),
            Array::Array(a) => Value::Array(a.get(i)?.clone()),
            Array::U64(a) => Value::U64(*a.get(i)?),
            Array::I64(a) => Value::I64(*a.get(i)?),
            Array::F64(a) => Value::F64(*a.get(i)?),
        })
    }

    /// The elements as [`Value`]s, in order.
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).map(move |i| self.get(i).expect("index below len"))
    }

    /// The elements of a string array, without copying them.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(a) => Some(a),
            _ => None,
        }
    }
}
