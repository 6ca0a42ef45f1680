//! Finding the request a token belongs to: the read on the hot path of
//! `VerifyToken` and `ResetPassword`.
//!
//! On a SQLite file it runs on the calling thread ([`SqliteReads`]). On
//! PostgreSQL the lookups that arrive while earlier ones are being answered
//! are gathered and answered by one statement, as group commit does for
//! writes: many concurrent callers then share a round trip, a connection
//! and a parse, where each used to cost its own. A lone lookup goes out at
//! once, so an idle server adds no wait.

use std::{collections::HashMap, sync::Arc};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, Statement, sea_query::Query,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{
    StoreError,
    entities::{request, request_token},
    requests::Request,
    sqlite_reads::SqliteReads,
    text_array,
};

/// Most lookups answered by one statement.
const MAX_BATCH: usize = 128;
/// Lookups waiting before callers wait to queue theirs.
const QUEUE_DEPTH: usize = 1024;

/// Finds requests by token digest; cheap to clone.
#[derive(Clone)]
pub struct TokenReads {
    via: Via,
}

#[derive(Clone)]
enum Via {
    /// A SQLite file's read-only connections, on the calling thread.
    Direct(Arc<SqliteReads>),
    /// PostgreSQL: gathered into batches by a task.
    Batches(mpsc::Sender<Lookup>),
    /// One statement through the pool (in-memory SQLite).
    Pool(DatabaseConnection),
}

type Answer = Result<Option<Request>, StoreError>;

struct Lookup {
    digest: String,
    answer: oneshot::Sender<Answer>,
    /// The caller's span: a batch's statement runs in its first caller's.
    span: tracing::Span,
}

impl TokenReads {
    /// Direct reads where given; else batches on PostgreSQL (their task
    /// stops when the last handle is dropped), else the pool.
    pub fn start(db: &DatabaseConnection, direct: Option<Arc<SqliteReads>>) -> Self {
        let via = match direct {
            Some(direct) => Via::Direct(direct),
            None if db.get_database_backend() == DbBackend::Postgres => {
                let (lookups, queued) = mpsc::channel(QUEUE_DEPTH);
                tokio::spawn(answer_batches(db.clone(), queued));
                Via::Batches(lookups)
            }
            None => Via::Pool(db.clone()),
        };
        Self { via }
    }

    /// The request the token with this digest belongs to, if any.
    pub async fn request_by_token_digest(&self, digest: &str) -> Answer {
        match &self.via {
            Via::Direct(direct) => direct.request_by_token_digest(digest),
            Via::Pool(db) => find_one(db, digest).await,
            Via::Batches(lookups) => {
                let (answer, answered) = oneshot::channel();
                let lookup = Lookup {
                    digest: digest.to_owned(),
                    answer,
                    span: tracing::Span::current(),
                };
                if lookups.send(lookup).await.is_err() {
                    return Err(stopping());
                }
                answered.await.unwrap_or_else(|_| Err(stopping()))
            }
        }
    }
}

fn stopping() -> StoreError {
    StoreError::Database(sea_orm::DbErr::Custom("rekey is stopping".into()))
}

async fn find_one(db: &DatabaseConnection, digest: &str) -> Answer {
    let owner = Query::select()
        .column(request_token::Column::RequestId)
        .from(request_token::Entity)
        .and_where(request_token::Column::Digest.eq(digest))
        .to_owned();
    Ok(request::Entity::find()
        .filter(request::Column::Id.in_subquery(owner))
        .one(db)
        .await?)
}

/// Answers the queued lookups (up to [`MAX_BATCH`]) with one statement,
/// then the ones queued meanwhile, one statement at a time: measured on the
/// bench, one batch in flight answered more lookups than two or four (whose
/// smaller batches cost PostgreSQL more statements for the same work).
async fn answer_batches(db: DatabaseConnection, mut queued: mpsc::Receiver<Lookup>) {
    let mut lookups = Vec::with_capacity(MAX_BATCH);
    while queued.recv_many(&mut lookups, MAX_BATCH).await > 0 {
        // Callers that gave up (deadline, cancelled call) need no answer.
        lookups.retain(|lookup| !lookup.answer.is_closed());
        let Some(first) = lookups.first() else {
            continue;
        };
        let span = first.span.clone();
        answer_batch(&db, std::mem::take(&mut lookups))
            .instrument(span)
            .await;
    }
}

async fn answer_batch(db: &DatabaseConnection, lookups: Vec<Lookup>) {
    let digests: Vec<&str> = lookups.iter().map(|l| l.digest.as_str()).collect();
    match find_many(db, &digests).await {
        Ok(found) => {
            for lookup in lookups {
                // Several callers may have asked for the same token.
                let request = found.get(&lookup.digest).cloned();
                let _ = lookup.answer.send(Ok(request));
            }
        }
        Err(error) => {
            for lookup in lookups {
                let _ = lookup.answer.send(Err(error.duplicate()));
            }
        }
    }
}

/// The requests of these token digests, by digest; unknown ones are absent.
async fn find_many(
    db: &DatabaseConnection,
    digests: &[&str],
) -> Result<HashMap<String, Request>, StoreError> {
    let rows = db.query_all_raw(finding_by_token_digests(digests)).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let digest: String = row.try_get("", "digest")?;
        found.insert(digest, Request::from_query_result(&row, "")?);
    }
    Ok(found)
}

/// The statement answering a batch on PostgreSQL: each digest is looked up
/// in `request_tokens`' primary key and its request in `requests`' (a
/// lateral subquery per digest, so the plan does not depend on the tables'
/// sizes when the connection first planned it).
pub fn finding_by_token_digests(digests: &[&str]) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT listed.digest, found.* FROM unnest($1::text[]) AS listed(digest) \
         CROSS JOIN LATERAL ( \
           SELECT requests.* FROM request_tokens \
           JOIN requests ON requests.id = request_tokens.request_id \
           WHERE request_tokens.digest = listed.digest LIMIT 1 \
         ) AS found",
        [text_array(digests)],
    )
}
