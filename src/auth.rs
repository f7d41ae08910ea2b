//! Credentials: argon2 password hashes, random tokens (sessions, agent
//! secrets, enrollment tokens) stored only as SHA-256 hashes and compared in
//! constant time, login throttling, and logging in ([`authenticate`]).
//! Never logs a secret.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use argon2::{Argon2, PasswordHasher, PasswordVerifier, password_hash::phc::PasswordHash};
use base64::Engine;
use sea_orm::TransactionTrait;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    audit::{self, Actor},
    error::AppError,
    state::AppState,
    store::{self, users::User},
};

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// Password checks (argon2: ~19 MiB and tens of milliseconds each) allowed
/// at once, one per core. More logins at once wait their turn rather than
/// each taking memory: a burst of unauthenticated logins cannot exhaust the
/// server, and the lock check runs again when a turn comes.
static SLOTS: LazyLock<usize> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
});
static PASSWORD_SLOTS: LazyLock<tokio::sync::Semaphore> =
    LazyLock::new(|| tokio::sync::Semaphore::new(*SLOTS));

/// How long a login waits for a turn before being told to retry.
pub const PASSWORD_WAIT: Duration = Duration::from_secs(10);

/// How many password checks may run at once.
pub fn password_slots() -> usize {
    *SLOTS
}

/// A turn at password work. It must go with the work onto the blocking pool
/// ([`in_turn`]): a request whose client hangs up is dropped, but its argon2
/// run is not, and the turn must last as long as that run.
pub struct Turn(#[allow(dead_code)] tokio::sync::SemaphorePermit<'static>);

/// A turn at password work, or None when none came free in time.
pub async fn password_turn() -> Option<Turn> {
    tokio::time::timeout(PASSWORD_WAIT, PASSWORD_SLOTS.acquire())
        .await
        .ok()?
        .ok()
        .map(Turn)
}

/// Runs `f` (argon2) on the blocking pool holding `turn`, and hands the turn
/// back with the result so the caller can finish (e.g. count a failure)
/// before the next in line goes. If the caller is dropped meanwhile, the
/// turn ends with the work, not before. None: the work panicked.
pub async fn in_turn<T: Send + 'static>(
    turn: Turn,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Turn)> {
    tokio::task::spawn_blocking(move || (f(), turn)).await.ok()
}

/// Runs argon2 work in a turn. None: no turn came free in time (the caller
/// says "busy, retry") or the work panicked.
pub async fn password_work<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let turn = password_turn().await?;
    in_turn(turn, f).await.map(|(out, _)| out)
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Enrollment tokens begin with this, so a token can never be read as a
/// command-line option (a bare base64url token starts with `-` one time in
/// 64) and secret scanners can recognise one. Tokens issued before carry no
/// prefix; they are stored hashed whole, so both forms look up the same way.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "rme_";
/// Agent secrets begin with this; see [`ENROLLMENT_TOKEN_PREFIX`].
pub const AGENT_SECRET_PREFIX: &str = "rms_";

/// A fresh enrollment token: `rme_` and a [`random_token`].
pub fn new_enrollment_token() -> String {
    format!("{ENROLLMENT_TOKEN_PREFIX}{}", random_token())
}

/// A fresh agent secret: `rms_` and a [`random_token`].
pub fn new_agent_secret() -> String {
    format!("{AGENT_SECRET_PREFIX}{}", random_token())
}

/// A fresh random token: 32 bytes from the OS, base64url without padding.
/// It may begin with `-`: anything handed to a person or a command line
/// goes through [`new_enrollment_token`] or [`new_agent_secret`] instead.
pub fn random_token() -> String {
    let mut buf = [0u8; 32];
    // The OS RNG failing leaves nothing safe to do: this is a true invariant.
    getrandom::fill(&mut buf).expect("operating system random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Hex SHA-256 of a token, the only form in which tokens are stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time equality of two stored hashes.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Failed-login limiter. A (username, client network) pair is locked after
/// `max_failures` failures inside `window`, a client network after four
/// times as many across usernames (a password spray), each until the window
/// since its first failure passes. A username failing from many networks is
/// never locked for everyone (anyone could lock anyone out); each further
/// attempt at it waits a little longer instead ([`LoginThrottle::backoff`]).
/// Networks are the client's IPv4 address or IPv6 /64 (`net::throttle_key`).
/// In memory on purpose: a restart forgiving a few attempts is harmless, a
/// database write per guess is not.
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    entries: Mutex<HashMap<String, (u32, Instant)>>,
}

/// A client network may fail this many times `max_failures` across usernames.
const ADDRESS_FACTOR: u32 = 4;
/// Per failure of a username beyond `max_failures` (from anywhere), and the most.
const BACKOFF_STEP: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

struct Keys {
    pair: String,
    net: String,
    user: String,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginThrottle {
            max_failures,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn keys(username: &str, ip: Option<IpAddr>) -> Keys {
        // Usernames are at most 64 characters: a longer one is not a user,
        // and must not make a key of whatever length was sent.
        let name: String = username.chars().take(64).collect::<String>().to_lowercase();
        let net = ip
            .map(crate::net::throttle_key)
            .unwrap_or_else(|| "unknown".into());
        Keys {
            pair: format!("p:{name}\u{0}{net}"),
            net: format!("a:{net}"),
            user: format!("u:{name}"),
        }
    }

    /// Failures counted for `key` inside the window (expired entries dropped).
    fn count(
        &self,
        map: &mut HashMap<String, (u32, Instant)>,
        key: &str,
        now: Instant,
    ) -> Option<(u32, Duration)> {
        let &(count, since) = map.get(key)?;
        let elapsed = now.duration_since(since);
        if elapsed >= self.window {
            map.remove(key);
            return None;
        }
        Some((count, self.window - elapsed))
    }

    /// Seconds until the caller may try again, if locked.
    pub fn locked_for(&self, username: &str, ip: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let keys = Self::keys(username, ip);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut worst = None;
        for (key, limit) in [
            (&keys.pair, self.max_failures),
            (&keys.net, self.max_failures.saturating_mul(ADDRESS_FACTOR)),
        ] {
            if let Some((count, left)) = self.count(&mut map, key, now)
                && count >= limit
            {
                let left = left.as_secs().max(1);
                worst = Some(worst.map_or(left, |w: u64| w.max(left)));
            }
        }
        worst
    }

    /// How long an attempt at `username` waits first: nothing until it has
    /// failed `max_failures` times (from anywhere), then a step more per
    /// failure, up to a couple of seconds.
    pub fn backoff(&self, username: &str) -> Duration {
        let now = Instant::now();
        let keys = Self::keys(username, None);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match self.count(&mut map, &keys.user, now) {
            Some((count, _)) if count > self.max_failures => {
                (BACKOFF_STEP * (count - self.max_failures)).min(BACKOFF_MAX)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn record_failure(&self, username: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bound memory under a spray of usernames: drop expired entries.
            let window = self.window;
            map.retain(|_, (_, since)| now.duration_since(*since) < window);
        }
        let keys = Self::keys(username, ip);
        for key in [keys.pair, keys.net, keys.user] {
            let e = map.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= self.window {
                *e = (0, now);
            }
            e.0 = e.0.saturating_add(1);
        }
    }

    /// A login succeeded: its pair starts afresh (the network's and the
    /// username's counts stay, so a correct guess does not reset a spray).
    pub fn record_success(&self, username: &str, ip: Option<IpAddr>) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&Self::keys(username, ip).pair);
    }
}

/// Checks credentials with throttling; opens a session on success.
pub async fn authenticate(
    state: &AppState,
    ip: Option<IpAddr>,
    username: &str,
    password: &str,
) -> Result<(User, String), AppError> {
    let addr = ip.map(|i| i.to_string()).unwrap_or_default();
    let locked = || {
        state.throttle.locked_for(username, ip).map(|secs| {
            AppError::TooManyRequests(
                "too_many_attempts",
                format!("too many failed logins: wait {secs} seconds and try again"),
                secs,
            )
        })
    };
    if let Some(e) = locked() {
        return Err(e);
    }
    // A username under attack from many places answers a little slower for
    // everyone, instead of not at all.
    let wait = state.throttle.backoff(username);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let Some(turn) = password_turn().await else {
        return Err(AppError::TooManyRequests(
            "server_busy",
            "too many logins at once: try again in a few seconds".into(),
            5,
        ));
    };
    // Attempts sent together waited for this turn: earlier ones may have
    // locked the login meanwhile.
    if let Some(e) = locked() {
        return Err(e);
    }
    // A name that could never be a user is not looked up (a NUL would even
    // fail the query on Postgres), but costs the same time.
    let found = match store::users::validate_username(username) {
        Ok(()) => store::users::find_for_login(&state.db, username).await?,
        Err(_) => None,
    };
    // Verify against a fixed hash when the user does not exist, so timing
    // does not reveal which usernames exist.
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, dummy_hash().to_string()),
    };
    let (ok, turn) = verify(password.to_string(), hash, turn).await;
    let ok = ok && user.is_some();
    let Some(user) = user.filter(|_| ok) else {
        // Counted before the turn is given up, so the next in line sees it.
        state.throttle.record_failure(username, ip);
        drop(turn);
        // What was typed, made fit to log and store.
        let shown = crate::text::one_line(username, 64);
        tracing::info!(username = %shown, ip = ?ip, "failed login");
        audit::record_logged(
            state,
            &Actor::named(&shown, addr.clone()),
            audit::Entry::new("login.failed", "user", &shown, serde_json::json!({})),
        )
        .await;
        return Err(AppError::BadCredentials(
            "wrong username or password".into(),
        ));
    };
    state.throttle.record_success(username, ip);
    drop(turn);
    // The session and its audit row commit together (both writes: SQLite
    // needs a transaction to write before it reads).
    let now = state.clock.now_ms();
    let absolute = state.settings.session_absolute.as_millis() as i64;
    let txn = state.db.begin().await?;
    let session = store::sessions::create(&txn, user.id, &addr, now, absolute).await?;
    let entry = audit::Entry::new("login", "user", user.id, serde_json::json!({}));
    audit::record(&txn, now, &Actor::user(&user, addr), entry).await?;
    txn.commit().await?;
    tracing::info!(username = %user.username, "login");
    Ok((user, session.token))
}

/// argon2 is deliberately slow: it runs on the blocking pool, in `turn`.
async fn verify(password: String, hash: String, turn: Turn) -> (bool, Option<Turn>) {
    match in_turn(turn, move || verify_password(&password, &hash)).await {
        Some((ok, turn)) => (ok, Some(turn)),
        None => (false, None),
    }
}

fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("not-a-real-password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_turn_lasts_as_long_as_its_work_even_when_the_caller_is_gone() {
        // Every turn taken by work that waits on a gate; then the callers
        // are dropped (as a request is when its client hangs up).
        let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let mut callers = Vec::new();
        for _ in 0..password_slots() {
            let turn = password_turn().await.expect("a free turn");
            let gate = gate.clone();
            let started_tx = started_tx.clone();
            callers.push(tokio::spawn(in_turn(turn, move || {
                let _ = started_tx.send(());
                let (open, cv) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            })));
        }
        for _ in 0..callers.len() {
            started.recv().await.expect("the work started");
        }
        for c in &callers {
            c.abort();
        }
        for c in callers {
            let _ = c.await;
        }
        let free_while_working = PASSWORD_SLOTS.available_permits();
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert_eq!(
            free_while_working, 0,
            "the work still ran, so its turns were still taken"
        );
        // The turns come back as the work ends.
        let turn = password_turn().await.expect("a turn after the work ended");
        drop(turn);
    }

    #[test]
    fn password_round_trip_and_wrong_password() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not-a-hash"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert!(a.len() >= 43);
        assert_eq!(token_hash(&a).len(), 64);
        assert!(hashes_equal(&token_hash(&a), &token_hash(&a)));
        assert!(!hashes_equal(&token_hash(&a), &token_hash(&b)));
    }

    #[test]
    fn throttle_locks_a_user_from_one_network_not_everywhere() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.locked_for("admin", Some(ip)).is_none());
            t.record_failure("admin", Some(ip));
        }
        assert!(t.locked_for("Admin", Some(ip)).is_some());
        // The same user from elsewhere is not locked, only slowed down
        // once it has failed more than the limit from anywhere.
        assert!(t.locked_for("admin", Some(other)).is_none());
        assert_eq!(t.backoff("admin"), Duration::ZERO);
        t.record_failure("admin", Some(other));
        assert_eq!(t.backoff("admin"), BACKOFF_STEP);
        for _ in 0..100 {
            t.record_failure("admin", Some(other));
        }
        assert_eq!(t.backoff("admin"), BACKOFF_MAX);
        // Another user from the first address is its own pair...
        assert!(t.locked_for("bob", Some(ip)).is_none());
        // ...until the address has sprayed four times the limit.
        for i in 0..9 {
            t.record_failure(&format!("user{i}"), Some(ip));
        }
        assert!(t.locked_for("bob", Some(ip)).is_some());
        // IPv6 counts per /64.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff".parse().unwrap();
        for _ in 0..3 {
            t.record_failure("carol", Some(a));
        }
        assert!(t.locked_for("carol", Some(b)).is_some());
        // Success clears the pair only.
        t.record_success("carol", Some(b));
        assert!(t.locked_for("carol", Some(a)).is_none());
    }
}
