//! The limits kept in Redis, so that every replica counts against the same
//! budgets. Each decision is one Lua script (atomic on the server: no
//! read-then-write race between replicas), every key expires once it says
//! nothing more, and keys are fixed-size digests under one prefix, so
//! memory stays bounded. Times come from the caller's [`Clock`] (replicas'
//! clocks agree to well within the limits' scale), which also lets tests
//! move time forward.
//!
//! The connection is made on first use and remade after a failure; while
//! Redis cannot be reached every call answers [`Unavailable`] at once
//! (within a one-second timeout), and the caller decides whether that
//! fails open or closed.

use std::time::Duration;

use async_trait::async_trait;
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::OnceCell;

use super::{Charged, Guess, GuessPolicy, Key, Limiter, Outcome, Rate, Unavailable};
use crate::time::Clock;

/// GCRA: KEYS[1]; ARGV now, interval, burst (µs). Returns -1 when a unit
/// was taken, else the wait in µs.
const TAKE: &str = r"
local now, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allowed_from = tat - interval * (burst - 1)
if allowed_from > now then return allowed_from - now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return -1
";

/// The shared part of the guess scripts: a budget's failures and the wait
/// it imposes. Budget `i` takes ARGV[2 + 4(i-1) ..]: free, base, max,
/// forget (µs).
const BUDGETS: &str = r"
local now = tonumber(ARGV[1])
local function policy(i)
  local o = 1 + (i - 1) * 4
  return tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
end
local function state(key, forget)
  local v = redis.call('HMGET', key, 'f', 'l')
  local f, l = tonumber(v[1]), tonumber(v[2])
  if not f or f <= 0 or not l or now - l >= forget then return 0, now end
  return f, l
end
local function blocked(key, i)
  local free, base, max, forget = policy(i)
  local f, l = state(key, forget)
  if f <= free then return 0 end
  local d = math.min(f - free - 1, 30)
  local wait = math.min(base * (2 ^ d), max)
  return math.max(l + wait - now, 0)
end
local function charge(key, i)
  local free, base, max, forget = policy(i)
  local f = state(key, forget) + 1
  redis.call('HSET', key, 'f', f, 'l', string.format('%.0f', now))
  redis.call('PEXPIRE', key, math.ceil(forget / 1000))
  return f
end
";

/// KEYS pair, target[, source]; ARGV now, then the pair's, the target's and
/// the source's budgets. Returns the wait in µs when blocked (and counts
/// nothing), else -2 when the target was charged, -1 when it was not.
const GUESS: &str = r"
local wait = math.max(blocked(KEYS[1], 1), blocked(KEYS[2], 2))
if #KEYS == 3 then wait = math.max(wait, blocked(KEYS[3], 3)) end
if wait > 0 then return wait end
local pair = charge(KEYS[1], 1)
if #KEYS == 3 then charge(KEYS[3], 3) end
if pair <= policy(1) then
  charge(KEYS[2], 2)
  return -2
end
return -1
";

/// KEYS pair, target[, source]; ARGV outcome (0 right, 1 wrong, 2
/// unchecked), whether the target was charged (1/0).
const SETTLE: &str = r"
local outcome, charged = tonumber(ARGV[1]), tonumber(ARGV[2])
if outcome == 1 then return 0 end
local function refund(key)
  if redis.call('HEXISTS', key, 'f') == 0 then return end
  if redis.call('HINCRBY', key, 'f', -1) <= 0 then redis.call('DEL', key) end
end
if outcome == 0 then redis.call('DEL', KEYS[1]) else refund(KEYS[1]) end
if #KEYS == 3 then refund(KEYS[3]) end
if charged == 1 then refund(KEYS[2]) end
return 0
";

/// Limits shared by every replica through one Redis.
pub struct RedisLimiter {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    /// Prepended to every key, so that one Redis can serve several
    /// deployments (and tests) apart.
    prefix: String,
    clock: Clock,
    take: Script,
    guess: Script,
    settle: Script,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long a call to Redis may take before the limiter says it is
/// unavailable.
const TIMEOUT: Duration = Duration::from_secs(1);

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://host:port/db`), with keys
    /// under `prefix`. Nothing is connected yet.
    pub fn new(url: &str, prefix: &str, clock: Clock) -> Result<Self, Unavailable> {
        let client = redis::Client::open(url).map_err(|e| Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            prefix: prefix.to_owned(),
            clock,
            take: Script::new(TAKE),
            guess: Script::new(&format!("{BUDGETS}{GUESS}")),
            settle: Script::new(SETTLE),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, Unavailable> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        Ok(connection.clone())
    }

    fn key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, crate::ids::hex(key.as_bytes()))
    }

    fn guess_keys(&self, guess: &Guess) -> Vec<String> {
        let mut keys = vec![self.key(&guess.pair), self.key(&guess.target)];
        if let Some(source) = &guess.source {
            keys.push(self.key(source));
        }
        keys
    }

    fn now(&self) -> i64 {
        self.clock.now().as_micros()
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn budget(invocation: &mut redis::ScriptInvocation<'_>, backoff: &super::Backoff) {
    invocation
        .arg(backoff.free)
        .arg(micros(backoff.base))
        .arg(micros(backoff.max))
        .arg(micros(backoff.forget));
}

fn unavailable(e: redis::RedisError) -> Unavailable {
    Unavailable(e.to_string())
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn take(&self, key: Key, rate: Rate) -> Result<Result<(), Duration>, Unavailable> {
        let mut connection = self.connection().await?;
        let answer: i64 = self
            .take
            .key(self.key(&key))
            .arg(self.now())
            .arg(micros(rate.interval).max(1))
            .arg(rate.burst.max(1))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(if answer < 0 {
            Ok(())
        } else {
            Err(Duration::from_micros(answer as u64))
        })
    }

    async fn guess(
        &self,
        guess: Guess,
        policy: GuessPolicy,
    ) -> Result<Result<Charged, Duration>, Unavailable> {
        let mut connection = self.connection().await?;
        let mut invocation = self.guess.prepare_invoke();
        for key in self.guess_keys(&guess) {
            invocation.key(key);
        }
        invocation.arg(self.now());
        budget(&mut invocation, &policy.pair);
        budget(&mut invocation, &policy.target);
        budget(&mut invocation, &policy.source);
        let answer: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(match answer {
            -2 => Ok(Charged { target: true }),
            -1 => Ok(Charged { target: false }),
            wait => Err(Duration::from_micros(wait.max(1) as u64)),
        })
    }

    async fn settle(
        &self,
        guess: Guess,
        charged: Charged,
        outcome: Outcome,
    ) -> Result<(), Unavailable> {
        let mut connection = self.connection().await?;
        let mut invocation = self.settle.prepare_invoke();
        for key in self.guess_keys(&guess) {
            invocation.key(key);
        }
        let outcome = match outcome {
            Outcome::Right => 0,
            Outcome::Wrong => 1,
            Outcome::Unchecked => 2,
        };
        let _: i64 = invocation
            .arg(outcome)
            .arg(i32::from(charged.target))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
