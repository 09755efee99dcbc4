//! Parquet input: one document per row, from a text column (tokenized like
//! text JSON Lines, see [`crate::tokenize`]) or a token-id list column.
//!
//! The file is read row group by row group through the `parquet` crate's
//! record reader, projected to the one column, so memory holds one row
//! group's pages of that column at a time, never the whole file. Documents
//! are packed in row order. Errors name the file, the row group and the row
//! (both 0-based).
use std::path::Path;
use std::sync::Arc;

use parquet::basic::{ConvertedType, LogicalType, Repetition, Type as PhysicalType};
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use crate::error::{FormatError, Result, TokenPos};
use crate::import::Progress;
use crate::pack::Packer;
use crate::text_input::{encode_texts, push_document};
use crate::tokenize::{TextOptions, Tokenizer};

/// Rows per batch handed to the tokenizer threads.
const BATCH_ROWS: usize = 4096;

fn err(path: &Path, at: String, reason: impl Into<String>) -> FormatError {
    FormatError::Parquet {
        path: path.to_path_buf(),
        at,
        reason: reason.into(),
    }
}

fn at_group(g: usize) -> String {
    format!("row group {g}: ")
}

fn at_row(g: usize, r: u64) -> String {
    format!("row group {g}, row {r}: ")
}

/// What the column must hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Text,
    Ids,
}

/// Opens `path` and finds the top-level column `field`, checking its type:
/// returns the reader and the projection schema (just that column).
fn open(
    path: &Path,
    field: &str,
    want: Want,
) -> Result<(SerializedFileReader<std::fs::File>, Type)> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io("open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| {
        err(
            path,
            String::new(),
            format!("not a readable Parquet file: {e}"),
        )
    })?;
    let root = reader.metadata().file_metadata().schema();
    let fields = root.get_fields();
    let Some(col) = fields.iter().find(|f| f.name() == field) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(err(
            path,
            String::new(),
            format!(
                "no column '{field}' (columns: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ));
    };
    let describe = describe_type(col);
    match want {
        Want::Text => {
            let ok = col.is_primitive()
                && col.get_physical_type() == PhysicalType::BYTE_ARRAY
                && col.get_basic_info().repetition() != Repetition::REPEATED;
            if !ok {
                return Err(err(
                    path,
                    String::new(),
                    format!("column '{field}' is {describe}, not a string column"),
                ));
            }
        }
        Want::Ids => {
            if !is_int_list(col) {
                return Err(err(
                    path,
                    String::new(),
                    format!("column '{field}' is {describe}, not a list of integer token ids"),
                ));
            }
        }
    }
    let projection = Type::group_type_builder(root.name())
        .with_fields(vec![Arc::clone(col)])
        .build()
        .map_err(|e| err(path, String::new(), e.to_string()))?;
    Ok((reader, projection))
}

/// A short description of a column's type for error messages.
fn describe_type(t: &Type) -> String {
    if t.is_primitive() {
        let mut s = format!("{}", t.get_physical_type());
        if let Some(l) = t.get_basic_info().logical_type() {
            s.push_str(&format!(" ({l:?})"));
        }
        if t.get_basic_info().repetition() == Repetition::REPEATED {
            s = format!("repeated {s}");
        }
        s
    } else if t.get_basic_info().converted_type() == ConvertedType::LIST
        || matches!(t.get_basic_info().logical_type(), Some(LogicalType::List))
    {
        "a list".into()
    } else {
        "a group (struct)".into()
    }
}

/// Whether `t` is a LIST whose leaf is an integer column.
fn is_int_list(t: &Type) -> bool {
    let info = t.get_basic_info();
    let is_list = !t.is_primitive()
        && (info.converted_type() == ConvertedType::LIST
            || matches!(info.logical_type(), Some(LogicalType::List)));
    // A bare repeated integer field also reads as a list.
    let repeated_leaf = t.is_primitive() && info.repetition() == Repetition::REPEATED;
    if !is_list && !repeated_leaf {
        return false;
    }
    let mut leaf = t;
    while !leaf.is_primitive() {
        match leaf.get_fields() {
            [one] => leaf = one,
            _ => return false,
        }
    }
    matches!(
        leaf.get_physical_type(),
        PhysicalType::INT32 | PhysicalType::INT64
    )
}

/// The one field of a projected row.
fn only_field(row: &Row) -> &Field {
    row.get_column_iter()
        .next()
        .map_or(&Field::Null, |(_, f)| f)
}

fn field_kind(f: &Field) -> String {
    let s = format!("{f:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

/// Iterates the rows of row group `g`, projected to the column.
fn rows<'a>(
    path: &Path,
    group: &'a dyn RowGroupReader,
    g: usize,
    projection: &Type,
) -> Result<parquet::record::reader::RowIter<'a>> {
    group
        .get_row_iter(Some(projection.clone()))
        .map_err(|e| err(path, at_group(g), e.to_string()))
}

/// Packs the documents of the token-id list column `field` of a Parquet file.
pub(crate) fn import_parquet_ids(
    packer: &mut Packer,
    path: &Path,
    field: &str,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let (reader, projection) = open(path, field, Want::Ids)?;
    let dtype = packer.dtype();
    let max = i128::from(dtype.max_id());
    let mut prog = Progress::new(progress);
    let mut tokens: Vec<u32> = Vec::new();
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(|e| err(path, at_group(g), e.to_string()))?;
        let bytes = group.metadata().compressed_size().max(0) as u64;
        for (r, row) in rows(path, group.as_ref(), g, &projection)?.enumerate() {
            let r = r as u64;
            let row = row.map_err(|e| err(path, at_row(g, r), e.to_string()))?;
            let list = match only_field(&row) {
                Field::ListInternal(l) => l,
                Field::Null => return Err(err(path, at_row(g, r), format!("'{field}' is null"))),
                other => {
                    return Err(err(
                        path,
                        at_row(g, r),
                        format!("'{field}' is {}, not a list", field_kind(other)),
                    ))
                }
            };
            tokens.clear();
            for (e, v) in list.elements().iter().enumerate() {
                let t: i128 = match *v {
                    Field::Byte(x) => x.into(),
                    Field::Short(x) => x.into(),
                    Field::Int(x) => x.into(),
                    Field::Long(x) => x.into(),
                    Field::UByte(x) => x.into(),
                    Field::UShort(x) => x.into(),
                    Field::UInt(x) => x.into(),
                    Field::ULong(x) => x.into(),
                    Field::Null => {
                        return Err(err(
                            path,
                            at_row(g, r),
                            format!("element {e} of '{field}' is null"),
                        ))
                    }
                    ref other => {
                        return Err(err(
                            path,
                            at_row(g, r),
                            format!(
                                "element {e} of '{field}' is {}, not an integer token id",
                                field_kind(other)
                            ),
                        ))
                    }
                };
                if t < 0 || t > max {
                    let pos = TokenPos::Row {
                        row_group: g as u64,
                        row: r,
                        element: e as u64,
                    };
                    return Err(if t < 0 {
                        FormatError::NegativeToken {
                            path: path.to_path_buf(),
                            pos,
                            value: t as i64,
                        }
                    } else {
                        FormatError::TokenOverflow {
                            path: path.to_path_buf(),
                            pos,
                            value: t as u64,
                            dtype,
                        }
                    });
                }
                tokens.push(t as u32);
            }
            packer.push_document(&tokens)?;
        }
        prog.add(bytes);
    }
    Ok(())
}

/// Packs the documents of the text column `opts.field` of a Parquet file,
/// tokenized with `tok` on all cores (documents stay in row order).
pub(crate) fn import_parquet_text(
    packer: &mut Packer,
    path: &Path,
    opts: &TextOptions,
    tok: &Tokenizer,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let field = opts.field.as_str();
    let (reader, projection) = open(path, field, Want::Text)?;
    let dtype = packer.dtype();
    let max = dtype.max_id();
    if let Some(b) = opts.bos {
        if u64::from(b) > max {
            return Err(FormatError::InvalidOption(format!(
                "BOS id {b} does not fit {dtype}"
            )));
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
    let mut prog = Progress::new(progress);
    let mut batch: Vec<String> = Vec::with_capacity(BATCH_ROWS);
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(|e| err(path, at_group(g), e.to_string()))?;
        let bytes = group.metadata().compressed_size().max(0) as u64;
        let mut iter = rows(path, group.as_ref(), g, &projection)?;
        let mut first = 0u64;
        let mut done = false;
        while !done {
            batch.clear();
            while batch.len() < BATCH_ROWS {
                let Some(row) = iter.next() else {
                    done = true;
                    break;
                };
                let r = first + batch.len() as u64;
                let row = row.map_err(|e| err(path, at_row(g, r), e.to_string()))?;
                match only_field(&row) {
                    Field::Str(s) => batch.push(s.clone()),
                    Field::Bytes(b) => match std::str::from_utf8(b.data()) {
                        Ok(s) => batch.push(s.to_string()),
                        Err(e) => {
                            return Err(err(
                                path,
                                at_row(g, r),
                                format!("'{field}' is not valid UTF-8: {e}"),
                            ))
                        }
                    },
                    Field::Null => {
                        return Err(err(path, at_row(g, r), format!("'{field}' is null")))
                    }
                    other => {
                        return Err(err(
                            path,
                            at_row(g, r),
                            format!("'{field}' is {}, not a string", field_kind(other)),
                        ))
                    }
                }
            }
            for (i, result) in encode_texts(tok, &batch, threads).into_iter().enumerate() {
                let r = first + i as u64;
                let tokens = result.map_err(|e| err(path, at_row(g, r), e))?;
                push_document(packer, path, &tokens, max, opts.bos, |t| TokenPos::Row {
                    row_group: g as u64,
                    row: r,
                    element: t,
                })?;
            }
            first += batch.len() as u64;
        }
        prog.add(bytes);
    }
    Ok(())
}
