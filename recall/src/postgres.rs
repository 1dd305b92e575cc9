//! A knowledge-base index kept in PostgreSQL with the pgvector extension: [`PgIndex`].
//!
//! It answers like an [`IndexShard`](crate::IndexShard) fed the same documents (same chunk ids, the same
//! [`Hit`] fields for each search mode, the same reciprocal rank fusion for hybrid search), but the data live
//! in one PostgreSQL table per knowledge base, so several stateless processes can share them and PostgreSQL's
//! backups, replication and transactions apply. Unlike the rest of this crate it is async (tokio-postgres).
//!
//! # Layout
//!
//! Knowledge base `kb` (a name of `[A-Za-z0-9._-]`) lives in table `shoal_kb_<name>_<hash>` of the connection's
//! current schema: `<name>` is `kb` lower-cased with `.` and `-` replaced by `_` and cut to 40 bytes, `<hash>` the first
//! 8 hex digits of SHA-256 of `kb`, so distinct names never share a table and the name is always a plain
//! identifier of at most 58 bytes. One row per chunk:
//!
//! ```text
//! chunk_id      BIGINT PRIMARY KEY   crate::chunk_id(doc_id, position), its 64 bits stored as a signed BIGINT
//! doc_id        TEXT                 indexed (<table>_doc)
//! position      INTEGER              the chunk's index in its document
//! title, source TEXT                 the document's (repeated on each of its chunks)
//! tags          TEXT[]               the document's
//! metadata      JSONB                the document's metadata, an object of strings
//! text          TEXT                 the chunk's text
//! start_byte, end_byte BIGINT        where the chunk lies in the document text
//! tokens        INTEGER              the chunk's token count
//! content_hash  TEXT                 hash of the whole document version, so identical re-sends change nothing
//! terms         TEXT                 the chunk's terms from the crate's own analyzer, space-joined
//! tsv           TSVECTOR             GENERATED ALWAYS AS (to_tsvector('simple', terms)) STORED, GIN-indexed
//! embedding     VECTOR(dimension)    the L2-normalised embedding, HNSW-indexed with vector_cosine_ops
//! ```
//!
//! # Sparse search
//!
//! PostgreSQL's text search configurations neither segment Chinese nor stem like the crate's BM25 index, so the
//! text is analyzed here, with the analyzer of [`SparseIndex`](crate::SparseIndex) (jieba for Han runs,
//! lower-cased and stemmed words for the rest), and the terms stored space-joined; the `simple` configuration
//! then only splits them again. A query text goes through the same analyzer, and its distinct terms are
//! OR-ed into a `to_tsquery('simple', …)` of quoted lexemes (no user syntax is interpreted). Chunks are ranked by
//! `ts_rank_cd`, a cover-density rank, not BM25: scores differ from the built-in index's, orders are similar.
//!
//! # Dense search
//!
//! Vectors are L2-normalised on the way in (zero and non-finite vectors are refused as by the built-in index)
//! and ranked by `embedding <=> query` (cosine distance) through the HNSW index; a hit's score is the cosine
//! similarity `1 − distance`. Each search raises `hnsw.ef_search` to the depth it reads (at most 1000) and, with
//! pgvector 0.8 or later, turns on `hnsw.iterative_scan = strict_order`, so filtered searches and deep ones
//! still return as many hits as exist.
//!
//! # Concurrency
//!
//! A [`PgIndex`] holds one connection, used by one operation at a time (an async mutex). Upserts run in a
//! transaction that also takes an advisory lock on (table, document), so concurrent upserts of one document
//! from several processes apply one after the other; table creation holds an advisory lock too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use pgvector::Vector;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls};

use crate::dense::vector::normalized;
use crate::document::{chunk_id, DocumentRecord, EmbeddedChunk};
use crate::error::{RecallError, Result};
use crate::fuse::{Ranking, SearchMode};
use crate::query::{Hit, MetadataFilter, SearchQuery, MAX_K};
use crate::shard::{check_document, content_hash, UpsertOutcome};
use crate::sparse::tokenizer;

/// Longest knowledge-base name accepted, in bytes.
pub const MAX_KB_NAME_BYTES: usize = 128;
/// Largest dimension pgvector's HNSW index accepts for `vector` columns.
pub const MAX_DIMENSION: usize = 2000;
/// How long connecting (TCP, and the server's answer to the start-up message) may take when
/// the URL sets no `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many bytes of the knowledge-base name appear in the table name.
const TABLE_STEM_BYTES: usize = 40;
/// Rows per INSERT statement when upserting.
const INSERT_BATCH_ROWS: usize = 256;
/// pgvector's largest `hnsw.ef_search`.
const MAX_EF_SEARCH: usize = 1000;
/// pgvector's default `hnsw.ef_search`.
const DEFAULT_EF_SEARCH: usize = 40;
/// Hybrid search reads this many times `k` candidates from each list before fusing (as `IndexShard`)...
const HYBRID_DEPTH_FACTOR: usize = 4;
/// ...and at least this many.
const HYBRID_MIN_DEPTH: usize = 20;
/// Advisory lock held while creating the extension and a table ("SHOALKB1").
const SETUP_LOCK_KEY: i64 = 0x5348_4f41_4c4b_4231;

/// One knowledge base's index in PostgreSQL (see the module docs).
pub struct PgIndex {
    client: Mutex<Client>,
    kb: String,
    table: String,
    dimension: usize,
    /// Where it is connected, for messages: `host:port` list, never the password.
    target: String,
    /// Whether pgvector knows `hnsw.iterative_scan` (0.8.0 and later).
    iterative_scan: bool,
}

impl std::fmt::Debug for PgIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgIndex")
            .field("kb", &self.kb)
            .field("table", &self.table)
            .field("dimension", &self.dimension)
            .field("target", &self.target)
            .finish()
    }
}

impl PgIndex {
    /// Connects to the PostgreSQL server at `url` (a `postgresql://user:password@host:port/db` URL or a
    /// `host=… port=… user=…` string; without TLS), creates the `vector` extension and the table of knowledge
    /// base `kb` if missing, and checks that an existing table has vectors of `dimension`.
    ///
    /// The connection task is spawned on the current tokio runtime. An unreachable or silent server gives a
    /// [`RecallError::Postgres`] naming the host and port (never the password) after at most the URL's
    /// `connect_timeout`, 5 seconds by default.
    pub async fn connect(url: &str, kb: &str, dimension: usize) -> Result<PgIndex> {
        let table = table_name(kb)?;
        if dimension == 0 || dimension > MAX_DIMENSION {
            return Err(RecallError::InvalidConfig(format!("dimension {dimension} is not in 1..={MAX_DIMENSION}")));
        }
        let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            RecallError::InvalidConfig(redact(&format!("invalid PostgreSQL connection string: {}", describe(&e)), url))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let target = describe_target(&config);
        let user = config.get_user().unwrap_or("(default user)").to_string();
        let limit = config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        // The whole handshake is bounded (a port that accepts and stays silent would otherwise
        // hang); anything but an answer from a PostgreSQL server is one message, so errors do
        // not tell refused, closed and silent ports apart.
        let no_server = || {
            RecallError::Postgres(format!(
                "cannot connect to PostgreSQL at {target} as {user}: no PostgreSQL server answered within {} s",
                limit.as_secs_f32()
            ))
        };
        let (mut client, connection) = match tokio::time::timeout(limit, config.connect(NoTls)).await {
            Err(_) => return Err(no_server()),
            Ok(Err(e)) if e.as_db_error().is_none() => return Err(no_server()),
            Ok(Err(e)) => {
                return Err(RecallError::Postgres(redact(
                    &format!("cannot connect to PostgreSQL at {target} as {user}: {}", describe(&e)),
                    url,
                )))
            }
            Ok(Ok(c)) => c,
        };
        let log_target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(server = %log_target, error = %describe(&e), "PostgreSQL connection ended");
            }
        });

        let setup = format!("setting up knowledge base {kb:?} (table {table}) at {target}");
        let tx = client.transaction().await.map_err(|e| pg_error(&setup, &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK_KEY]).await.map_err(|e| pg_error(&setup, &e))?;
        tx.batch_execute("CREATE EXTENSION IF NOT EXISTS vector").await.map_err(|e| pg_error(&setup, &e))?;
        let version: String = tx
            .query_one("SELECT extversion FROM pg_extension WHERE extname = 'vector'", &[])
            .await
            .map_err(|e| pg_error(&setup, &e))?
            .get(0);
        let existing = tx
            .query_one(
                "SELECT c.oid IS NOT NULL, (SELECT a.atttypmod FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = c.oid AND a.attname = 'embedding' AND NOT a.attisdropped) \
                 FROM (SELECT to_regclass($1)::oid AS oid) c",
                &[&table],
            )
            .await
            .map_err(|e| pg_error(&setup, &e))?;
        let (exists, typmod): (bool, Option<i32>) = (existing.get(0), existing.get(1));
        match (exists, typmod) {
            (false, _) => {
                tx.batch_execute(&create_table_sql(&table, kb, dimension)).await.map_err(|e| pg_error(&setup, &e))?;
            }
            (true, Some(d)) if usize::try_from(d).ok() == Some(dimension) => {}
            (true, Some(d)) => {
                return Err(RecallError::InvalidConfig(format!(
                    "knowledge base {kb:?} already exists at {target} (table {table}) with vectors of dimension {d}, \
                     not {dimension}: drop it or connect with dimension {d}"
                )));
            }
            (true, None) => {
                return Err(RecallError::InvalidConfig(format!(
                    "table {table} at {target} exists but is not a Shoal knowledge-base table (no embedding column)"
                )));
            }
        }
        tx.commit().await.map_err(|e| pg_error(&setup, &e))?;
        tracing::info!(kb, table = %table, server = %target, dimension, pgvector = %version, "PostgreSQL index ready");
        Ok(PgIndex {
            client: Mutex::new(client),
            kb: kb.to_string(),
            table,
            dimension,
            target,
            iterative_scan: version_at_least(&version, (0, 8)),
        })
    }

    /// The knowledge base's name.
    pub fn kb(&self) -> &str {
        &self.kb
    }

    /// The table that holds it.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Its vector dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Adds or replaces one document with its chunks and their embeddings, in one transaction: every earlier
    /// chunk of the document id is deleted and the new ones inserted. Re-sending identical content writes
    /// nothing (`unchanged`). The document and its chunks are checked as by
    /// [`IndexShard::upsert_document`](crate::IndexShard::upsert_document) before anything is written.
    #[tracing::instrument(level = "info", skip_all, fields(kb = %self.kb, doc_id = %doc.doc_id, chunks = chunks.len()))]
    pub async fn upsert_document(&self, doc: &DocumentRecord, chunks: &[EmbeddedChunk]) -> Result<UpsertOutcome> {
        check_document(doc, chunks, &|v| normalized(v, self.dimension).map(|_| ()))?;
        let mut rows = Rows::default();
        for (position, (chunk, vector)) in chunks.iter().enumerate() {
            let unit = normalized(vector, self.dimension)?;
            let position =
                u32::try_from(position).map_err(|_| RecallError::InvalidRequest("too many chunks".into()))?;
            rows.chunk_id.push(chunk_id(&doc.doc_id, position) as i64);
            rows.position.push(position as i32);
            rows.text.push(chunk.text.clone());
            rows.terms.push(tokenizer::terms(&chunk.text).join(" "));
            rows.start.push(to_i64(chunk.start));
            rows.end.push(to_i64(chunk.end));
            rows.tokens.push(i32::try_from(chunk.tokens).unwrap_or(i32::MAX));
            rows.embedding.push(Vector::from(unit));
        }
        let hash = content_hash(doc, chunks);
        let metadata = serde_json::to_value(&doc.metadata).map_err(|e| RecallError::InvalidRequest(e.to_string()))?;
        let table = &self.table;
        let context = format!("upserting document {:?} into {table} at {}", doc.doc_id, self.target);
        let err = |e: tokio_postgres::Error| pg_error(&context, &e);

        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(err)?;
        let lock_key = format!("{table}/{}", doc.doc_id);
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&lock_key]).await.map_err(err)?;
        let versions = tx
            .query(
                &format!("SELECT content_hash, count(*) FROM {table} WHERE doc_id = $1 GROUP BY content_hash"),
                &[&doc.doc_id],
            )
            .await
            .map_err(err)?;
        let old_chunks: i64 = versions.iter().map(|r| r.get::<_, i64>(1)).sum();
        if versions.len() == 1
            && versions[0].get::<_, &str>(0) == hash
            && usize::try_from(old_chunks).ok() == Some(chunks.len())
        {
            tx.commit().await.map_err(err)?;
            return Ok(UpsertOutcome { chunks: chunks.len(), replaced_chunks: 0, unchanged: true });
        }
        tx.execute(&format!("DELETE FROM {table} WHERE doc_id = $1"), &[&doc.doc_id]).await.map_err(err)?;
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {table} (chunk_id, doc_id, position, title, source, tags, metadata, text, start_byte, \
                 end_byte, tokens, content_hash, terms, embedding) \
                 SELECT u.chunk_id, $1, u.position, $2, $3, $4, $5, u.text, u.start_byte, u.end_byte, u.tokens, $6, \
                 u.terms, u.embedding \
                 FROM unnest($7::bigint[], $8::integer[], $9::text[], $10::bigint[], $11::bigint[], $12::integer[], \
                 $13::text[], $14::vector[]) \
                 AS u(chunk_id, position, text, start_byte, end_byte, tokens, terms, embedding)"
            ))
            .await
            .map_err(err)?;
        for from in (0..chunks.len()).step_by(INSERT_BATCH_ROWS) {
            let to = (from + INSERT_BATCH_ROWS).min(chunks.len());
            tx.execute(
                &insert,
                &[
                    &doc.doc_id,
                    &doc.title,
                    &doc.source,
                    &doc.tags,
                    &metadata,
                    &hash,
                    &&rows.chunk_id[from..to],
                    &&rows.position[from..to],
                    &&rows.text[from..to],
                    &&rows.start[from..to],
                    &&rows.end[from..to],
                    &&rows.tokens[from..to],
                    &&rows.terms[from..to],
                    &&rows.embedding[from..to],
                ],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        let replaced_chunks = usize::try_from(old_chunks).unwrap_or_default();
        Ok(UpsertOutcome { chunks: chunks.len(), replaced_chunks, unchanged: false })
    }

    /// Deletes every chunk of `doc_id`; returns whether the document existed.
    #[tracing::instrument(level = "info", skip(self), fields(kb = %self.kb))]
    pub async fn delete_document(&self, doc_id: &str) -> Result<bool> {
        let context = format!("deleting document {doc_id:?} from {} at {}", self.table, self.target);
        let client = self.client.lock().await;
        let deleted = client
            .execute(&format!("DELETE FROM {} WHERE doc_id = $1", self.table), &[&doc_id])
            .await
            .map_err(|e| pg_error(&context, &e))?;
        Ok(deleted > 0)
    }

    /// Searches the knowledge base, answering as [`IndexShard::search`](crate::IndexShard::search) does: dense
    /// mode ranks by cosine similarity (`score`, `dense_score`, `dense_rank`), sparse mode by text rank
    /// (`score`, `sparse_score`, `sparse_rank`), hybrid fuses both lists (each read `max(4k, 20)` deep) by
    /// reciprocal rank fusion (`score` is the RRF score; both ranks and scores are filled where the chunk was
    /// in that list). Only chunks of documents that pass `query.filter` answer.
    #[tracing::instrument(level = "debug", skip_all, fields(kb = %self.kb, mode = ?query.mode, k = query.k))]
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>> {
        query.validate()?;
        let text = query.text.as_deref().filter(|t| !t.trim().is_empty()).filter(|_| query.mode != SearchMode::Dense);
        let vector = query.vector.as_deref().filter(|_| query.mode != SearchMode::Sparse);
        let depth = match query.mode {
            SearchMode::Hybrid => (query.k * HYBRID_DEPTH_FACTOR).clamp(HYBRID_MIN_DEPTH, MAX_K * HYBRID_DEPTH_FACTOR),
            _ => query.k,
        };
        let unit = vector.map(|v| normalized(v, self.dimension)).transpose()?;
        let terms: BTreeSet<String> = text.map(tokenizer::terms).unwrap_or_default().into_iter().collect();
        let context = format!("searching {} at {}", self.table, self.target);
        let err = |e: tokio_postgres::Error| pg_error(&context, &e);

        let mut client = self.client.lock().await;
        let mut dense_hits = Vec::new();
        if let Some(unit) = unit {
            let filter = SqlFilter::new(&query.filter, 3);
            let sql = format!(
                "SELECT chunk_id, embedding <=> $1 FROM {} {} ORDER BY embedding <=> $1 LIMIT $2",
                self.table,
                filter.where_clause()
            );
            let ef_search = depth.clamp(DEFAULT_EF_SEARCH, MAX_EF_SEARCH);
            let mut settings = format!("SET LOCAL hnsw.ef_search = {ef_search}");
            if self.iterative_scan {
                settings.push_str("; SET LOCAL hnsw.iterative_scan = strict_order");
            }
            let query_vector = Vector::from(unit);
            let limit = to_i64(depth);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&query_vector, &limit];
            params.extend(filter.params());
            let tx = client.transaction().await.map_err(err)?;
            tx.batch_execute(&settings).await.map_err(err)?;
            let rows = tx.query(&sql, &params).await.map_err(err)?;
            tx.commit().await.map_err(err)?;
            dense_hits = rows.iter().map(|r| (r.get::<_, i64>(0) as u64, (1.0 - r.get::<_, f64>(1)) as f32)).collect();
            dense_hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        let mut sparse_hits = Vec::new();
        if !terms.is_empty() {
            let filter = SqlFilter::new(&query.filter, 3);
            let conditions = std::iter::once("tsv @@ q".to_string()).chain(filter.clauses.iter().cloned());
            let sql = format!(
                "SELECT chunk_id, ts_rank_cd(tsv, q) AS score FROM {}, to_tsquery('simple', $1) AS q WHERE {} \
                 ORDER BY score DESC, chunk_id < 0, chunk_id LIMIT $2",
                self.table,
                conditions.collect::<Vec<_>>().join(" AND ")
            );
            let tsquery = or_query(&terms);
            let limit = to_i64(depth);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tsquery, &limit];
            params.extend(filter.params());
            let rows = client.query(&sql, &params).await.map_err(err)?;
            sparse_hits = rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, f32>(1))).collect();
            sparse_hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }

        let ranking = Ranking::new(query.mode, dense_hits, sparse_hits, query.k);
        let ranked = &ranking.order;
        if ranked.is_empty() {
            return Ok(Vec::new());
        }

        let ids: Vec<i64> = ranked.iter().map(|&(id, _)| id as i64).collect();
        let rows = client
            .query(
                &format!(
                    "SELECT chunk_id, doc_id, position, title, source, metadata, text FROM {} \
                     WHERE chunk_id = ANY($1)",
                    self.table
                ),
                &[&ids],
            )
            .await
            .map_err(err)?;
        drop(client);
        let mut by_id: HashMap<u64, tokio_postgres::Row> =
            rows.into_iter().map(|r| (r.get::<_, i64>(0) as u64, r)).collect();
        let mut hits = Vec::with_capacity(ranked.len());
        for &(chunk_id, score) in ranked {
            let Some(row) = by_id.remove(&chunk_id) else {
                tracing::warn!(chunk_id, "a chunk was deleted while it was being searched");
                continue;
            };
            let metadata: serde_json::Value = row.get(5);
            let (dense_rank, sparse_rank, dense_score, sparse_score) = ranking.of(chunk_id);
            hits.push(Hit {
                chunk_id,
                doc_id: row.get(1),
                title: row.get(3),
                source: row.get(4),
                metadata: metadata_map(metadata),
                position: u32::try_from(row.get::<_, i32>(2)).unwrap_or_default(),
                text: row.get(6),
                score,
                dense_rank,
                sparse_rank,
                dense_score,
                sparse_score,
            });
        }
        Ok(hits)
    }

    /// Documents and chunks stored.
    pub async fn stats(&self) -> Result<(usize, usize)> {
        let context = format!("counting {} at {}", self.table, self.target);
        let client = self.client.lock().await;
        let row = client
            .query_one(&format!("SELECT count(DISTINCT doc_id), count(*) FROM {}", self.table), &[])
            .await
            .map_err(|e| pg_error(&context, &e))?;
        let count = |i: usize| usize::try_from(row.get::<_, i64>(i)).unwrap_or_default();
        Ok((count(0), count(1)))
    }

    /// Drops the knowledge base's table with its indexes and every chunk. Later calls on this index fail
    /// until it is connected again (which creates an empty table).
    #[tracing::instrument(level = "info", skip(self), fields(kb = %self.kb))]
    pub async fn drop_index(&self) -> Result<()> {
        let context = format!("dropping {} at {}", self.table, self.target);
        let client = self.client.lock().await;
        client.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table)).await.map_err(|e| pg_error(&context, &e))
    }
}

/// One batch of chunk rows, column by column (sent as arrays and `unnest`ed).
#[derive(Default)]
struct Rows {
    chunk_id: Vec<i64>,
    position: Vec<i32>,
    text: Vec<String>,
    terms: Vec<String>,
    start: Vec<i64>,
    end: Vec<i64>,
    tokens: Vec<i32>,
    embedding: Vec<Vector>,
}

/// A metadata filter as SQL conditions on the table's columns, with their parameters numbered from `first`.
struct SqlFilter {
    clauses: Vec<String>,
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl SqlFilter {
    fn new(filter: &MetadataFilter, first: usize) -> Self {
        let mut sql = SqlFilter { clauses: Vec::new(), values: Vec::new() };
        let mut add = |clause: &str, value: Box<dyn ToSql + Sync + Send>| {
            let n = first + sql.values.len();
            sql.clauses.push(clause.replace('?', &format!("${n}")));
            sql.values.push(value);
        };
        if !filter.doc_ids.is_empty() {
            add("doc_id = ANY(?::text[])", Box::new(filter.doc_ids.clone()));
        }
        if let Some(source) = &filter.source {
            add("source = ?::text", Box::new(source.clone()));
        }
        if !filter.tags_any.is_empty() {
            add("tags && ?::text[]", Box::new(filter.tags_any.clone()));
        }
        if !filter.metadata.is_empty() {
            let wanted: serde_json::Map<String, serde_json::Value> =
                filter.metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            add("metadata @> ?::jsonb", Box::new(serde_json::Value::Object(wanted)));
        }
        sql
    }

    fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    fn params(&self) -> impl Iterator<Item = &(dyn ToSql + Sync)> {
        self.values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync))
    }
}

/// The table of knowledge base `kb` (see the module docs); refuses names outside `[a-z0-9._-]{1,128}`.
pub fn table_name(kb: &str) -> Result<String> {
    if kb.is_empty() || kb.len() > MAX_KB_NAME_BYTES {
        return Err(RecallError::InvalidRequest(format!(
            "knowledge base name {kb:?} must be 1 to {MAX_KB_NAME_BYTES} bytes"
        )));
    }
    if let Some(c) = kb.chars().find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-')) {
        return Err(RecallError::InvalidRequest(format!(
            "knowledge base name {kb:?} holds {c:?}: only letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    // Lower-cased for an unquoted identifier; the hash of the exact name keeps `Docs` and `docs` apart.
    let stem: String = kb
        .chars()
        .take(TABLE_STEM_BYTES)
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let digest = Sha256::digest(kb.as_bytes());
    let mut hash = String::with_capacity(8);
    for byte in &digest[..4] {
        let _ = write!(hash, "{byte:02x}");
    }
    Ok(format!("shoal_kb_{stem}_{hash}"))
}

fn create_table_sql(table: &str, kb: &str, dimension: usize) -> String {
    // `table` is a checked identifier and `kb` holds only [A-Za-z0-9._-], so both are safe to splice.
    format!(
        "CREATE TABLE {table} (
            chunk_id BIGINT PRIMARY KEY,
            doc_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            title TEXT,
            source TEXT,
            tags TEXT[] NOT NULL DEFAULT '{{}}',
            metadata JSONB NOT NULL DEFAULT '{{}}',
            text TEXT NOT NULL,
            start_byte BIGINT NOT NULL,
            end_byte BIGINT NOT NULL,
            tokens INTEGER NOT NULL,
            content_hash TEXT NOT NULL,
            terms TEXT NOT NULL,
            tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, terms)) STORED,
            embedding VECTOR({dimension}) NOT NULL
        );
        CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops);
        CREATE INDEX {table}_tsv ON {table} USING gin (tsv);
        CREATE INDEX {table}_doc ON {table} (doc_id);
        COMMENT ON TABLE {table} IS 'Shoal knowledge base {kb}: one row per chunk (shoal-recall PgIndex)';"
    )
}

/// `'a' | 'b' | …`: the terms as quoted tsquery lexemes (quotes and backslashes doubled), OR-ed.
fn or_query(terms: &BTreeSet<String>) -> String {
    let quoted: Vec<String> =
        terms.iter().map(|t| format!("'{}'", t.replace('\\', "\\\\").replace('\'', "''"))).collect();
    quoted.join(" | ")
}

fn metadata_map(value: serde_json::Value) -> BTreeMap<String, String> {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether a `major.minor[.patch]` version is at least `(major, minor)`.
fn version_at_least(version: &str, wanted: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= wanted
}

/// `host:port` of each host in `config` (or the socket path), for messages.
fn describe_target(config: &Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            tokio_postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{}", port(i)),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() {
        let addrs: Vec<String> =
            config.get_hostaddrs().iter().enumerate().map(|(i, a)| format!("{a}:{}", port(i))).collect();
        if addrs.is_empty() {
            return "(no host given)".into();
        }
        return addrs.join(", ");
    }
    hosts.join(", ")
}

/// A tokio-postgres error with its causes (its own message names only the kind) and, for a server error, the
/// server's message, detail and hint.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            let _ = write!(text, "; {detail}");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(text, "; hint: {hint}");
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn pg_error(context: &str, e: &tokio_postgres::Error) -> RecallError {
    RecallError::Postgres(format!("{context}: {}", describe(e)))
}

/// `text` with the password of connection string `url` (URL or key=value form) replaced by `***`.
fn redact(text: &str, url: &str) -> String {
    let mut secrets = Vec::new();
    if let Some(rest) = url.split_once("://").map(|(_, rest)| rest) {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password.to_string());
                if let Some(decoded) = percent_decode(password) {
                    secrets.push(decoded);
                }
            }
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                if let Some(("password", value)) = pair.split_once('=') {
                    secrets.push(value.to_string());
                }
            }
        }
    } else {
        for pair in url.split_whitespace() {
            if let Some((key, value)) = pair.split_once('=') {
                if key.trim() == "password" {
                    secrets.push(value.trim_matches('\'').to_string());
                }
            }
        }
    }
    let mut out = text.to_string();
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        out = out.replace(&secret, "***");
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_safe_and_distinct() {
        let a = table_name("docs.v1").expect("name");
        let b = table_name("docs_v1").expect("name");
        assert!(a.starts_with("shoal_kb_docs_v1_"));
        assert_ne!(a, b);
        let long = table_name(&"x".repeat(MAX_KB_NAME_BYTES)).expect("name");
        assert!(long.len() + "_hnsw".len() <= 63, "{long}");
        assert!(table_name("").is_err());
        let upper = table_name("Docs").expect("name");
        assert!(upper.starts_with("shoal_kb_docs_") && upper != table_name("docs").expect("name"), "{upper}");
        assert!(table_name("a;drop table x").is_err());
        assert!(table_name(&"x".repeat(MAX_KB_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn tsquery_lexemes_are_quoted() {
        let terms: BTreeSet<String> = ["长城", "it's", "a\\b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(or_query(&terms), r"'a\\b' | 'it''s' | '长城'");
    }

    #[test]
    fn passwords_are_redacted() {
        let url = "postgresql://shoal:s3cr%40t@db.example:5433/kb?sslmode=disable";
        assert_eq!(redact("x s3cr%40t y s3cr@t", url), "x *** y ***");
        assert_eq!(redact("pw hunter2", "host=h user=u password=hunter2"), "pw ***");
        let config: Config = url.parse().expect("config");
        assert_eq!(describe_target(&config), "db.example:5433");
    }

    /// Type-checked, never run: every operation's future can move between a runtime's threads.
    #[allow(dead_code)]
    fn futures_are_send(index: &PgIndex, query: &SearchQuery, doc: &DocumentRecord, chunks: &[EmbeddedChunk]) {
        fn send<T: Send>(_: T) {}
        send(PgIndex::connect("", "kb", 8));
        send(index.upsert_document(doc, chunks));
        send(index.delete_document("d"));
        send(index.search(query));
        send(index.stats());
        send(index.drop_index());
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("0.8.2", (0, 8)));
        assert!(version_at_least("1.0", (0, 8)));
        assert!(!version_at_least("0.7.4", (0, 8)));
    }

    #[test]
    fn filters_number_their_parameters() {
        let mut filter =
            MetadataFilter { source: Some("a.pdf".into()), tags_any: vec!["x".into()], ..Default::default() };
        filter.metadata.insert("lang".into(), "zh".into());
        let sql = SqlFilter::new(&filter, 3);
        assert_eq!(sql.where_clause(), "WHERE source = $3::text AND tags && $4::text[] AND metadata @> $5::jsonb");
        assert_eq!(sql.params().count(), 3);
        assert_eq!(SqlFilter::new(&MetadataFilter::default(), 3).where_clause(), "");
    }
}
