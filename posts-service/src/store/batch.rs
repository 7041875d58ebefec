//! Reads that arrive while others are on their way to the database wait
//! for a free lane and then go together: one statement answers every caller
//! of a batch, and callers asking the same thing share one answer.
//!
//! A batch is sent only after each of its callers asked, so it reads a
//! state at least as new as the one each caller could have read alone:
//! a write answered before a read was asked is always seen by that read.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most callers one batch answers.
const MAX_BATCH: usize = 64;

/// Callers waiting for a lane before a new caller waits to queue.
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

/// Reads the values of distinct keys, in the keys' order.
type Fetch<K, V> = Arc<
    dyn Fn(Vec<K>) -> futures::future::BoxFuture<'static, Result<Vec<V>, sqlx::Error>>
        + Send
        + Sync,
>;

impl<K, V> Batches<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Batches answered by `fetch`, at most `lanes` at a time. While every
    /// lane is busy, callers gather for the next batch; with a lane free, a
    /// caller's read goes at once. The gathering task stops when this is
    /// dropped.
    pub(super) fn new<F, Fut>(lanes: usize, fetch: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<V>, sqlx::Error>> + Send + 'static,
    {
        let (queue, asks) = mpsc::channel(QUEUE_DEPTH);
        let fetch: Fetch<K, V> = Arc::new(move |keys| Box::pin(fetch(keys)));
        tokio::spawn(gather(asks, Arc::new(Semaphore::new(lanes)), fetch));
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

/// Takes a free lane, then every caller queued by then (up to
/// [`MAX_BATCH`]), and answers them on that lane.
async fn gather<K, V>(
    mut asks: mpsc::Receiver<Ask<K, V>>,
    lanes: Arc<Semaphore>,
    fetch: Fetch<K, V>,
) where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    loop {
        let Ok(lane) = lanes.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if asks.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let fetch = fetch.clone();
        tokio::spawn(async move {
            answer(batch, &fetch).await;
            drop(lane);
        });
    }
}

/// Reads each distinct key of `batch` once and gives every caller its value.
async fn answer<K, V>(mut batch: Vec<Ask<K, V>>, fetch: &Fetch<K, V>)
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
    match fetch(keys).await {
        Ok(values) if values.len() == asked => {
            for (ask, slot) in batch.into_iter().zip(slot_of) {
                let _ = ask.answer.send(Ok(values[slot].clone()));
            }
        }
        Ok(values) => {
            let e = sqlx::Error::Protocol(format!(
                "a batch of {asked} reads was answered with {} values",
                values.len()
            ));
            for ask in batch {
                let _ = ask.answer.send(Err(same_kind(&e, "a batch of reads")));
            }
        }
        Err(e) => {
            for ask in batch {
                let _ = ask.answer.send(Err(same_kind(&e, "a batch of reads")));
            }
        }
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

    use tokio::task::JoinHandle;

    use super::*;

    /// The keys of each batch fetched, in order.
    type Asked = Arc<Mutex<Vec<Vec<i64>>>>;

    /// Batches over a fetch that records what each batch asked for and
    /// waits for `gate` before answering `key * 10`.
    fn recorded(lanes: usize, gate: Arc<Semaphore>) -> (Batches<i64, i64>, Asked) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let batches = Batches::new(lanes, move |keys: Vec<i64>| {
            let (log, gate) = (log.clone(), gate.clone());
            async move {
                log.lock().unwrap().push(keys.clone());
                gate.acquire().await.unwrap().forget();
                Ok(keys.into_iter().map(|k| k * 10).collect())
            }
        });
        (batches, asked)
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
    async fn a_read_with_a_lane_free_goes_at_once_alone() {
        let (batches, asked) = recorded(2, Arc::new(Semaphore::new(100)));
        assert_eq!(batches.get(4).await.unwrap(), 40);
        assert_eq!(batches.get(5).await.unwrap(), 50);
        assert_eq!(*asked.lock().unwrap(), vec![vec![4], vec![5]]);
    }

    /// Batches with one lane, held by a read of key 1 until `gate` opens;
    /// that read's task to await.
    async fn one_lane_held(
        gate: &Arc<Semaphore>,
    ) -> (
        Arc<Batches<i64, i64>>,
        Asked,
        JoinHandle<Result<i64, sqlx::Error>>,
    ) {
        let (batches, asked) = recorded(1, gate.clone());
        let batches = Arc::new(batches);
        let first = tokio::spawn({
            let batches = batches.clone();
            async move { batches.get(1).await }
        });
        while asked.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (batches, asked, first)
    }

    #[tokio::test]
    async fn reads_asked_while_the_lanes_are_busy_go_together_each_key_once() {
        let gate = Arc::new(Semaphore::new(0));
        let (batches, asked, first) = one_lane_held(&gate).await;
        let waiting: Vec<_> = [2, 3, 2, 2]
            .into_iter()
            .map(|key| {
                let batches = batches.clone();
                tokio::spawn(async move { batches.get(key).await })
            })
            .collect();
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
    async fn a_failed_batch_fails_each_caller_with_its_kind() {
        let batches: Batches<i64, i64> = Batches::new(1, |_keys: Vec<i64>| async {
            Err(sqlx::Error::PoolTimedOut)
        });
        let e = batches.get(1).await.unwrap_err();
        assert!(shared::db::is_unavailable(&e), "{e}");
        let batches: Batches<i64, i64> =
            Batches::new(1, |_keys: Vec<i64>| async { Err(sqlx::Error::RowNotFound) });
        let e = batches.get(1).await.unwrap_err();
        assert!(!shared::db::is_unavailable(&e), "{e}");
        // An answer that does not fit its keys is an error, not a panic.
        let batches: Batches<i64, i64> =
            Batches::new(1, |_keys: Vec<i64>| async { Ok(Vec::new()) });
        assert!(batches.get(1).await.is_err());
    }

    #[tokio::test]
    async fn a_caller_that_gave_up_is_not_read_for() {
        let gate = Arc::new(Semaphore::new(0));
        let (batches, asked, first) = one_lane_held(&gate).await;
        // Queued behind the busy lane, then abandoned.
        let gone = tokio::time::timeout(Duration::from_millis(10), batches.get(2)).await;
        assert!(gone.is_err());
        gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        assert_eq!(batches.get(3).await.unwrap(), 30);
        assert_eq!(*asked.lock().unwrap(), vec![vec![1], vec![3]]);
    }
}
