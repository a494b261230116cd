//! What only PostgreSQL does differently: many rows travel as one array per
//! column, read with `UNNEST`, so a batch of any size is one statement per
//! kind; `text` cannot hold NUL. No business rules here.

use std::borrow::Cow;

use sqlx::{PgConnection, PgPool};

use super::dialect::{BulkWrites, WritePool};
use super::rows::{Close, CloseById, DetailUpdate, NewInterval};

/// New details for open intervals, one array per column.
const UPDATE_DETAILS: &str = "UPDATE intervals AS i \
     SET reason = u.reason, extension_status = u.extension_status, destination = u.destination \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
         AS u (agent, reason, extension_status, destination) \
     WHERE i.agent = u.agent AND i.ended_at IS NULL";

/// Ends open intervals (never before their start), one array per column.
const CLOSE_OPEN: &str = "UPDATE intervals AS i \
     SET ended_at = GREATEST(i.started_at, c.ended_at) \
     FROM UNNEST($1::text[], $2::bigint[]) AS c (agent, ended_at) \
     WHERE i.agent = c.agent AND i.ended_at IS NULL";

/// Ends intervals by id, one array per column.
const CLOSE_BY_ID: &str = "UPDATE intervals AS i SET ended_at = c.ended_at \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS c (id, ended_at) WHERE i.id = c.id";

/// Inserts rows, one array per column.
const INSERT_INTERVALS: &str = "INSERT INTO intervals \
     (agent, status, reason, extension_status, destination, started_at, ended_at, seq) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::bigint[], $8::bigint[])";

/// Text as PostgreSQL accepts it: `text` cannot hold NUL, and a value it
/// rejects would fail the batch on every retry, so NUL becomes U+FFFD.
pub(crate) fn pg_text(text: Option<&str>) -> Option<Cow<'_, str>> {
    text.map(|text| {
        if text.contains('\0') {
            Cow::Owned(text.replace('\0', "\u{fffd}"))
        } else {
            Cow::Borrowed(text)
        }
    })
}

/// One text column of many rows, ready to bind as `text[]`.
fn pg_texts<'a, T>(
    rows: &'a [T],
    column: impl Fn(&'a T) -> Option<&'a str>,
) -> Vec<Option<Cow<'a, str>>> {
    rows.iter().map(|row| pg_text(column(row))).collect()
}

impl WritePool for PgPool {
    type Database = sqlx::Postgres;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

impl BulkWrites for PgConnection {
    async fn update_details(&mut self, rows: &[DetailUpdate<'_>]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(UPDATE_DETAILS)
            .bind(rows.iter().map(|u| u.agent).collect::<Vec<_>>())
            .bind(pg_texts(rows, |u| u.reason))
            .bind(pg_texts(rows, |u| u.extension_status))
            .bind(pg_texts(rows, |u| u.destination))
            .execute(self)
            .await
            .map(drop)
    }

    async fn close_open(&mut self, rows: &[Close<'_>]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(CLOSE_OPEN)
            .bind(rows.iter().map(|c| c.agent).collect::<Vec<_>>())
            .bind(rows.iter().map(|c| c.ended_at).collect::<Vec<_>>())
            .execute(self)
            .await
            .map(drop)
    }

    async fn close_by_id(&mut self, rows: &[CloseById]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(CLOSE_BY_ID)
            .bind(rows.iter().map(|c| c.id).collect::<Vec<_>>())
            .bind(rows.iter().map(|c| c.ended_at).collect::<Vec<_>>())
            .execute(self)
            .await
            .map(drop)
    }

    async fn insert_intervals(&mut self, rows: &[NewInterval<'_>]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(INSERT_INTERVALS)
            .bind(rows.iter().map(|row| row.agent).collect::<Vec<_>>())
            .bind(rows.iter().map(|row| row.status).collect::<Vec<_>>())
            .bind(pg_texts(rows, |row| row.reason))
            .bind(pg_texts(rows, |row| row.extension_status))
            .bind(pg_texts(rows, |row| row.destination))
            .bind(rows.iter().map(|row| row.started_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|row| row.ended_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|row| row.seq).collect::<Vec<_>>())
            .execute(self)
            .await
            .map(drop)
    }
}
