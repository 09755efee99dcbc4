//! Parquet inputs: real files written with the `parquet` crate's own writer
//! (several row groups, snappy), packed and compared byte for byte with
//! packing the same documents from JSON Lines; errors that name the file,
//! the row group and the row.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use seqfeed_format::*;

/// The pydoc paragraphs (see `tests/text.rs`), plus an empty document.
fn documents() -> Vec<String> {
    let text = include_str!("data/pydoc_topics.txt");
    let mut docs: Vec<String> = text
        .strip_suffix('\n')
        .unwrap()
        .split("\n\u{c}\n")
        .map(str::to_string)
        .collect();
    docs.push(String::new());
    docs.push("naïve café — 日本語のテキスト 🚀".into());
    docs
}

/// Token-id documents: varied lengths (some empty), ids up to 60000.
fn id_documents() -> Vec<Vec<i64>> {
    (0..300u64)
        .map(|i| {
            let len = (i * 37 % 101) as usize;
            (0..len as u64)
                .map(|j| ((i * 7919 + j * 104_729) % 60_000) as i64)
                .collect()
        })
        .collect()
}

const ROWS_PER_GROUP: usize = 64;

fn props() -> Arc<WriterProperties> {
    Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    )
}

/// Writes `id: int64` and `text: string` (optional; `None` is null), 64
/// rows per row group.
fn write_text_parquet(path: &Path, docs: &[Option<String>]) {
    let schema = Arc::new(
        parse_message_type("message doc { required int64 id; optional binary text (STRING); }")
            .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props()).unwrap();
    for (g, chunk) in docs.chunks(ROWS_PER_GROUP).enumerate() {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..chunk.len())
            .map(|i| (g * ROWS_PER_GROUP + i) as i64)
            .collect();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = chunk
            .iter()
            .flatten()
            .map(|s| ByteArray::from(s.as_str()))
            .collect();
        let defs: Vec<i16> = chunk.iter().map(|d| i16::from(d.is_some())).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        assert!(rg.next_column().unwrap().is_none());
        rg.close().unwrap();
    }
    w.close().unwrap();
}

/// Writes `input_ids: list<int64>` (the standard three-level LIST), 64 rows
/// per row group.
fn write_ids_parquet(path: &Path, docs: &[Vec<i64>]) {
    let schema = Arc::new(
        parse_message_type(
            "message doc { optional group input_ids (LIST) { repeated group list { optional int64 element; } } }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props()).unwrap();
    for chunk in docs.chunks(ROWS_PER_GROUP) {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
        for d in chunk {
            if d.is_empty() {
                // The list is present but has no element.
                defs.push(1);
                reps.push(0);
            }
            for (j, &v) in d.iter().enumerate() {
                values.push(v);
                defs.push(3);
                reps.push(i16::from(j > 0));
            }
        }
        col.typed::<Int64Type>()
            .write_batch(&values, Some(&defs), Some(&reps))
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn payload(src: &Source) -> Vec<u8> {
    (0..src.total_sequences())
        .flat_map(|i| src.sequence_bytes(i).unwrap().to_vec())
        .collect()
}

fn text_kind(field: &str) -> TextOptions {
    TextOptions::new(Encoding::Cl100kBase).field(field)
}

#[test]
fn parquet_text_packs_like_the_same_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    assert!(docs.len() > 4 * ROWS_PER_GROUP, "several row groups");
    let pq = dir.path().join("corpus.parquet");
    write_text_parquet(&pq, &docs.iter().cloned().map(Some).collect::<Vec<_>>());
    let jsonl = dir.path().join("corpus.jsonl");
    let lines: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    std::fs::write(&jsonl, lines).unwrap();

    let opts = PackOptions::new("web", Dtype::U32, 257)
        .eos(100_257)
        .tail(Tail::Pad(100_257))
        .max_file_bytes(4096 + 40 * 257 * 4);
    let from_pq = Input {
        path: pq.clone(),
        kind: InputKind::ParquetText(text_kind("text")),
    };
    let done = std::cell::Cell::new(0u64);
    let (a, sa) = pack_inputs(&[from_pq], &opts, dir.path().join("a"), &|n| {
        done.set(done.get() + n)
    })
    .unwrap();
    let (b, sb) = pack_inputs(
        &[Input::text(&jsonl, text_kind("text"))],
        &opts,
        dir.path().join("b"),
        &|_| {},
    )
    .unwrap();
    assert_eq!(sa.documents, docs.len() as u64);
    assert_eq!(
        (sa.sequences, sa.input_tokens, sa.pad_tokens),
        (sb.sequences, sb.input_tokens, sb.pad_tokens)
    );
    assert!(a.files().len() > 1, "the source is split into files");
    assert_eq!(payload(&a), payload(&b));
    assert_eq!(
        a.manifest().tokenizer.as_ref().unwrap().name,
        "tiktoken:cl100k_base"
    );
    assert!(done.get() > 0, "progress is reported");
}

#[test]
fn parquet_id_lists_pack_like_the_same_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let docs = id_documents();
    let pq = dir.path().join("ids.parquet");
    write_ids_parquet(&pq, &docs);
    let jsonl = dir.path().join("ids.jsonl");
    let lines: String = docs
        .iter()
        .map(|d| serde_json::json!({ "input_ids": d }).to_string() + "\n")
        .collect();
    std::fs::write(&jsonl, lines).unwrap();

    let opts = PackOptions::new("ids", Dtype::U16, 100).eos(65_000);
    let detected = Input::detect(&pq, None, "input_ids").unwrap();
    assert_eq!(
        detected.kind,
        InputKind::ParquetIds {
            field: "input_ids".into()
        }
    );
    let (a, sa) = pack_inputs(&[detected], &opts, dir.path().join("a"), &|_| {}).unwrap();
    let from_jsonl = Input::detect(&jsonl, None, "input_ids").unwrap();
    let (b, sb) = pack_inputs(&[from_jsonl], &opts, dir.path().join("b"), &|_| {}).unwrap();
    assert_eq!(sa.documents, docs.len() as u64);
    assert_eq!(
        (sa.sequences, sa.input_tokens, sa.dropped_tokens),
        (sb.sequences, sb.input_tokens, sb.dropped_tokens)
    );
    assert!(sa.sequences > 100);
    assert_eq!(payload(&a), payload(&b));
}

fn pack_err(input: Input, dtype: Dtype) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let e = pack_inputs(&[input], &PackOptions::new("s", dtype, 16), &out, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(!out.exists(), "nothing is left behind on failure");
    e
}

#[test]
fn missing_column_names_the_file_and_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("t.parquet");
    write_text_parquet(&pq, &[Some("hello".into())]);
    let e = pack_err(
        Input {
            path: pq.clone(),
            kind: InputKind::ParquetText(text_kind("body")),
        },
        Dtype::U32,
    );
    assert!(e.contains("t.parquet"), "{e}");
    assert!(e.contains("no column 'body'"), "{e}");
    assert!(e.contains("id, text"), "{e}");
    let e = pack_err(Input::detect(&pq, None, "input_ids").unwrap(), Dtype::U16);
    assert!(e.contains("no column 'input_ids'"), "{e}");
}

#[test]
fn wrong_typed_column_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("t.parquet");
    write_text_parquet(&pq, &[Some("hello".into())]);
    // An int64 column as text.
    let e = pack_err(
        Input {
            path: pq.clone(),
            kind: InputKind::ParquetText(text_kind("id")),
        },
        Dtype::U32,
    );
    assert!(
        e.contains("t.parquet") && e.contains("column 'id' is INT64"),
        "{e}"
    );
    assert!(e.contains("not a string column"), "{e}");
    // A string column as token ids.
    let e = pack_err(
        Input {
            path: pq.clone(),
            kind: InputKind::ParquetIds {
                field: "text".into(),
            },
        },
        Dtype::U16,
    );
    assert!(e.contains("column 'text' is BYTE_ARRAY"), "{e}");
    assert!(e.contains("not a list of integer token ids"), "{e}");
}

#[test]
fn null_text_and_oversized_id_name_row_group_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("t.parquet");
    let mut docs: Vec<Option<String>> = (0..100).map(|i| Some(format!("doc {i}"))).collect();
    docs[ROWS_PER_GROUP + 3] = None;
    write_text_parquet(&pq, &docs);
    let e = pack_err(
        Input {
            path: pq.clone(),
            kind: InputKind::ParquetText(text_kind("text")),
        },
        Dtype::U32,
    );
    assert!(
        e.contains("t.parquet: row group 1, row 3: 'text' is null"),
        "{e}"
    );

    let pq = dir.path().join("ids.parquet");
    let mut ids = id_documents();
    ids[ROWS_PER_GROUP * 2 + 5] = vec![1, 2, 70_000];
    write_ids_parquet(&pq, &ids);
    let e = pack_err(Input::detect(&pq, None, "input_ids").unwrap(), Dtype::U16);
    assert!(
        e.contains("ids.parquet: token id 70000 at row group 2, row 5, element 2"),
        "{e}"
    );
}

#[test]
fn not_a_parquet_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("bad.parquet");
    std::fs::write(&pq, b"this is not parquet").unwrap();
    let e = pack_err(Input::detect(&pq, None, "input_ids").unwrap(), Dtype::U16);
    assert!(
        e.contains("bad.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
}
