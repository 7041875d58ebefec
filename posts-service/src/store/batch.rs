//! Reads that arrive while a batch is on its way to the database wait for
//! the next one and then go together: one statement can answer every
//! caller of a batch, and callers asking the same thing share one answer.
//! One batch is on its way at a time, as one writer commits the groups of
//! new posts: more at once split the same calls into smaller batches, and
//! each statement costs the server about the same whatever its size
//! (BENCHMARKS.md, "Reads in batches on PostgreSQL").
//!
//! A batch is sent only after each of its callers asked, so it reads a
//! state at least as new as the one each caller could have read alone:
//! a write answered before a read was asked is always seen by that read.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use tokio::sync::{mpsc, oneshot};

/// The most callers one batch answers.
const MAX_BATCH: usize = 64;

/// Callers waiting for the next batch before a new caller waits to queue.
const QUEUE_DEPTH: usize = 1024;

/// Batches of reads by key: `K` asked, `V` answered.
pub(super) struct Batches<K, V> {
    queue: mpsc::Sender<Ask<K, V>>,
}

/// One caller's read and where its answer goes.
struct Ask<K, V> {
    key: K,
    answer: oneshot::Sender<Result<V, sqlx::Error>>,
}

/// What a batch read for each of its distinct keys, in the keys' order: a
/// key that failed fails only its own callers.
type Answers<V> = Vec<Result<V, sqlx::Error>>;

/// Reads the values of distinct keys.
type Fetch<K, V> =
    Arc<dyn Fn(Vec<K>) -> futures::future::BoxFuture<'static, Answers<V>> + Send + Sync>;

impl<K, V> Batches<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Batches answered by `fetch`. While a batch is on its way, callers
    /// gather for the next; with none on its way, a caller's read goes at
    /// once. The gathering task stops when this is dropped.
    pub(super) fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answers<V>> + Send + 'static,
    {
        let (queue, asks) = mpsc::channel(QUEUE_DEPTH);
        let fetch: Fetch<K, V> = Arc::new(move |keys| Box::pin(fetch(keys)));
        tokio::spawn(gather(asks, fetch));
        Self { queue }
    }

    /// The value of `key`, read in the next batch.
    pub(super) async fn get(&self, key: K) -> Result<V, sqlx::Error> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Ask { key, answer })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answered.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

/// Takes every caller queued (up to [`MAX_BATCH`]) and answers them; those
/// who ask meanwhile make up the next batch.
async fn gather<K, V>(mut asks: mpsc::Receiver<Ask<K, V>>, fetch: Fetch<K, V>)
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while asks.recv_many(&mut batch, MAX_BATCH).await > 0 {
        answer(&mut batch, &fetch).await;
    }
}

/// Reads each distinct key of `batch` once and gives every caller its
/// value, leaving `batch` empty.
async fn answer<K, V>(batch: &mut Vec<Ask<K, V>>, fetch: &Fetch<K, V>)
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    // A caller that stopped waiting has had its call fail already.
    batch.retain(|ask| !ask.answer.is_closed());
    if batch.is_empty() {
        return;
    }
    let mut keys = Vec::new();
    let mut slots = HashMap::new();
    let slot_of: Vec<usize> = batch
        .iter()
        .map(|ask| {
            *slots.entry(ask.key.clone()).or_insert_with(|| {
                keys.push(ask.key.clone());
                keys.len() - 1
            })
        })
        .collect();
    let asked = keys.len();
    let answers = fetch(keys).await;
    for (ask, slot) in batch.drain(..).zip(slot_of) {
        let answer = match answers.get(slot) {
            Some(Ok(value)) => Ok(value.clone()),
            Some(Err(e)) => Err(same_kind(e, "a batch of reads")),
            None => Err(sqlx::Error::Protocol(format!(
                "a batch of {asked} reads was answered with {} values",
                answers.len()
            ))),
        };
        let _ = ask.answer.send(answer);
    }
}

/// `e` again, for one more caller of a statement it failed for many (a
/// database error cannot be cloned): the same kind, so each caller gets the
/// status it would have got alone (`UNAVAILABLE` for a lost or busy
/// database, `INTERNAL` otherwise), with the cause, in `doing`, kept for
/// the log.
pub(super) fn same_kind(e: &sqlx::Error, doing: &str) -> sqlx::Error {
    let cause = format!("{doing}: {e}");
    if shared::db::is_unavailable(e) {
        sqlx::Error::Io(std::io::Error::other(cause))
    } else {
        sqlx::Error::Protocol(cause)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use tokio::{sync::Semaphore, task::JoinHandle};

    use super::*;

    /// The keys of each batch fetched, in order.
    type Asked = Arc<Mutex<Vec<Vec<i64>>>>;

    /// Batches over a fetch that records what each batch asked for and
    /// waits for `gate` before answering `key * 10` (a negative key fails).
    fn recorded(gate: Arc<Semaphore>) -> (Arc<Batches<i64, i64>>, Asked) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let batches = Batches::new(move |keys: Vec<i64>| {
            let (log, gate) = (log.clone(), gate.clone());
            async move {
                log.lock().unwrap().push(keys.clone());
                gate.acquire().await.unwrap().forget();
                keys.into_iter()
                    .map(|k| match k {
                        ..0 => Err(sqlx::Error::RowNotFound),
                        _ => Ok(k * 10),
                    })
                    .collect()
            }
        });
        (Arc::new(batches), asked)
    }

    /// `key`, asked from a task of its own.
    fn ask(batches: &Arc<Batches<i64, i64>>, key: i64) -> JoinHandle<Result<i64, sqlx::Error>> {
        let batches = batches.clone();
        tokio::spawn(async move { batches.get(key).await })
    }

    /// Batches with a read of key 1 on its way until `gate` opens; that
    /// read's task to await.
    async fn one_batch_on_its_way(
        gate: &Arc<Semaphore>,
    ) -> (
        Arc<Batches<i64, i64>>,
        Asked,
        JoinHandle<Result<i64, sqlx::Error>>,
    ) {
        let (batches, asked) = recorded(gate.clone());
        let first = ask(&batches, 1);
        while asked.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (batches, asked, first)
    }

    #[test]
    fn each_caller_of_a_failed_statement_gets_the_status_it_would_have_got_alone() {
        let lost = sqlx::Error::Io(std::io::Error::other("connection reset"));
        let broken = sqlx::Error::ColumnNotFound("id".into());
        for (e, unavailable) in [
            (lost, true),
            (sqlx::Error::PoolTimedOut, true),
            (broken, false),
        ] {
            let copy = same_kind(&e, "a batch of reads");
            assert_eq!(shared::db::is_unavailable(&copy), unavailable, "{e}");
            assert!(copy.to_string().contains(&e.to_string()), "{copy}");
        }
    }

    #[tokio::test]
    async fn a_read_with_no_batch_on_its_way_goes_at_once_alone() {
        let (batches, asked) = recorded(Arc::new(Semaphore::new(100)));
        assert_eq!(batches.get(4).await.unwrap(), 40);
        assert_eq!(batches.get(5).await.unwrap(), 50);
        assert_eq!(*asked.lock().unwrap(), vec![vec![4], vec![5]]);
    }

    #[tokio::test]
    async fn reads_asked_while_a_batch_is_on_its_way_go_together_each_key_once() {
        let gate = Arc::new(Semaphore::new(0));
        let (batches, asked, first) = one_batch_on_its_way(&gate).await;
        let waiting: Vec<_> = [2, 3, 2, 2].map(|key| ask(&batches, key)).into();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        let mut answers = Vec::new();
        for read in waiting {
            answers.push(read.await.unwrap().unwrap());
        }
        assert_eq!(answers, vec![20, 30, 20, 20]);
        assert_eq!(*asked.lock().unwrap(), vec![vec![1], vec![2, 3]]);
    }

    #[tokio::test]
    async fn a_key_that_failed_fails_only_its_own_callers() {
        let gate = Arc::new(Semaphore::new(0));
        let (batches, asked, first) = one_batch_on_its_way(&gate).await;
        let waiting: Vec<_> = [2, -1, 3, -1].map(|key| ask(&batches, key)).into();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        let mut answers = Vec::new();
        for read in waiting {
            answers.push(read.await.unwrap().ok());
        }
        assert_eq!(answers, vec![Some(20), None, Some(30), None]);
        assert_eq!(*asked.lock().unwrap(), vec![vec![1], vec![2, -1, 3]]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_caller_with_its_kind() {
        let batches: Batches<i64, i64> = Batches::new(|keys: Vec<i64>| async move {
            keys.iter()
                .map(|_| Err(sqlx::Error::PoolTimedOut))
                .collect()
        });
        let e = batches.get(1).await.unwrap_err();
        assert!(shared::db::is_unavailable(&e), "{e}");
        let batches: Batches<i64, i64> = Batches::new(|keys: Vec<i64>| async move {
            keys.iter().map(|_| Err(sqlx::Error::RowNotFound)).collect()
        });
        let e = batches.get(1).await.unwrap_err();
        assert!(!shared::db::is_unavailable(&e), "{e}");
        // An answer that does not fit its keys is an error, not a panic.
        let batches: Batches<i64, i64> = Batches::new(|_keys: Vec<i64>| async { Vec::new() });
        assert!(batches.get(1).await.is_err());
    }

    #[tokio::test]
    async fn a_caller_that_gave_up_is_not_read_for() {
        let gate = Arc::new(Semaphore::new(0));
        let (batches, asked, first) = one_batch_on_its_way(&gate).await;
        // Queued behind the batch on its way, then abandoned.
        let gone = tokio::time::timeout(Duration::from_millis(10), batches.get(2)).await;
        assert!(gone.is_err());
        gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        assert_eq!(batches.get(3).await.unwrap(), 30);
        assert_eq!(*asked.lock().unwrap(), vec![vec![1], vec![3]]);
    }
}
