//! The shared state's store: what cluster mode needs of etcd, as a trait, so that
//! transitions, conflicts and a store that is down are tested without processes or
//! sockets ([`MemoryStore`]), and run for real on etcd ([`switchyard_store::Etcd`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use switchyard_store::{Etcd, EtcdError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer: the store is down or out of reach.
    Unavailable(String),
    /// It answered, but refused (auth, a malformed value …).
    Refused(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "store unreachable: {e}"),
            StoreError::Refused(e) => write!(f, "store refused: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Unreachable(m) => StoreError::Unavailable(m),
            other => StoreError::Refused(other.to_string()),
        }
    }
}

/// A key's value and the revision it was last written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: i64,
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Keys with revisions and leases: etcd's model.
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>>;
    /// Every key under `prefix`, in key order.
    fn prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<Entry>>;
    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], lease: Option<i64>) -> StoreFuture<'a, ()>;
    /// Writes only if the key's revision is still `expected` (0: absent). The new revision,
    /// from the write itself, or `None` when another writer got there first.
    fn compare_and_put<'a>(
        &'a self,
        key: &'a str,
        expected: i64,
        value: &'a [u8],
        lease: Option<i64>,
    ) -> StoreFuture<'a, Option<i64>>;
    /// A lease that ends `ttl` seconds after its last keep-alive, with the keys put on it.
    fn grant(&self, ttl: u64) -> StoreFuture<'_, i64>;
    /// False when the lease already ended.
    fn keepalive(&self, lease: i64) -> StoreFuture<'_, bool>;
    fn revoke(&self, lease: i64) -> StoreFuture<'_, ()>;
}

impl Store for Etcd {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        Box::pin(async move {
            Ok(Etcd::get(self, key).await?.map(|kv| Entry {
                key: kv.key,
                value: kv.value,
                revision: kv.mod_revision,
            }))
        })
    }

    fn prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<Entry>> {
        Box::pin(async move {
            Ok(Etcd::prefix(self, prefix)
                .await?
                .into_iter()
                .map(|kv| Entry {
                    key: kv.key,
                    value: kv.value,
                    revision: kv.mod_revision,
                })
                .collect())
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], lease: Option<i64>) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(Etcd::put(self, key, value, lease).await?) })
    }

    fn compare_and_put<'a>(
        &'a self,
        key: &'a str,
        expected: i64,
        value: &'a [u8],
        lease: Option<i64>,
    ) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move { Ok(Etcd::compare_and_put(self, key, expected, value, lease).await?) })
    }

    fn grant(&self, ttl: u64) -> StoreFuture<'_, i64> {
        Box::pin(async move { Ok(Etcd::grant(self, ttl).await?) })
    }

    fn keepalive(&self, lease: i64) -> StoreFuture<'_, bool> {
        Box::pin(async move { Ok(Etcd::keepalive(self, lease).await?) })
    }

    fn revoke(&self, lease: i64) -> StoreFuture<'_, ()> {
        Box::pin(async move { Ok(Etcd::revoke(self, lease).await?) })
    }
}

/// An in-memory store for tests: one revision counter, leases that end when revoked or
/// [`MemoryStore::expire`]d, and a switch that makes it unreachable.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

type Interleave = Box<dyn FnOnce(&mut MemoryWriter<'_>) + Send>;

#[derive(Default)]
struct Memory {
    revision: i64,
    keys: BTreeMap<String, (Vec<u8>, i64, Option<i64>)>,
    next_lease: i64,
    leases: Vec<i64>,
    down: bool,
    after_next_write: Option<Interleave>,
}

/// Writes another party makes, from inside [`MemoryStore::after_next_write`].
pub struct MemoryWriter<'a>(&'a mut Memory);

impl MemoryWriter<'_> {
    pub fn put(&mut self, key: &str, value: &[u8]) {
        self.0.write(key, value, None);
    }
}

impl Memory {
    fn write(&mut self, key: &str, value: &[u8], lease: Option<i64>) -> i64 {
        self.revision += 1;
        self.keys
            .insert(key.to_string(), (value.to_vec(), self.revision, lease));
        self.revision
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down {
            Err(StoreError::Unavailable(
                "the memory store is switched off".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Off: every call answers [`StoreError::Unavailable`].
    pub fn set_reachable(&self, reachable: bool) {
        self.lock().down = !reachable;
    }

    /// Ends a lease as if its holder died: its keys go.
    pub fn expire(&self, lease: i64) {
        let mut m = self.lock();
        m.leases.retain(|l| *l != lease);
        m.keys.retain(|_, (_, _, l)| *l != Some(lease));
    }

    /// Runs `f` right after the next successful write, as another writer racing in.
    pub fn after_next_write(&self, f: impl FnOnce(&mut MemoryWriter<'_>) + Send + 'static) {
        self.lock().after_next_write = Some(Box::new(f));
    }

    fn entry(key: &str, v: &(Vec<u8>, i64, Option<i64>)) -> Entry {
        Entry {
            key: key.to_string(),
            value: v.0.clone(),
            revision: v.1,
        }
    }

    fn after_write(m: &mut Memory) {
        if let Some(f) = m.after_next_write.take() {
            f(&mut MemoryWriter(m));
        }
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        let m = self.lock();
        let r = m
            .check()
            .map(|()| m.keys.get(key).map(|v| Self::entry(key, v)));
        Box::pin(async move { r })
    }

    fn prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<Entry>> {
        let m = self.lock();
        let r = m.check().map(|()| {
            m.keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| Self::entry(k, v))
                .collect()
        });
        Box::pin(async move { r })
    }

    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], lease: Option<i64>) -> StoreFuture<'a, ()> {
        let mut m = self.lock();
        let r = m.check().map(|()| {
            m.write(key, value, lease);
            Self::after_write(&mut m);
        });
        Box::pin(async move { r })
    }

    fn compare_and_put<'a>(
        &'a self,
        key: &'a str,
        expected: i64,
        value: &'a [u8],
        lease: Option<i64>,
    ) -> StoreFuture<'a, Option<i64>> {
        let mut m = self.lock();
        let r = m.check().map(|()| {
            let current = m.keys.get(key).map_or(0, |v| v.1);
            if current != expected {
                return None;
            }
            let rev = m.write(key, value, lease);
            Self::after_write(&mut m);
            Some(rev)
        });
        Box::pin(async move { r })
    }

    fn grant(&self, _ttl: u64) -> StoreFuture<'_, i64> {
        let mut m = self.lock();
        let r = m.check().map(|()| {
            m.next_lease += 1;
            let id = m.next_lease;
            m.leases.push(id);
            id
        });
        Box::pin(async move { r })
    }

    fn keepalive(&self, lease: i64) -> StoreFuture<'_, bool> {
        let m = self.lock();
        let r = m.check().map(|()| m.leases.contains(&lease));
        Box::pin(async move { r })
    }

    fn revoke(&self, lease: i64) -> StoreFuture<'_, ()> {
        let down = self.lock().check();
        if down.is_ok() {
            self.expire(lease);
        }
        Box::pin(async move { down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_behaves_like_etcd() {
        let s = MemoryStore::new();
        assert_eq!(s.get("/a").await.unwrap(), None);
        let r1 = s
            .compare_and_put("/a", 0, b"1", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.compare_and_put("/a", 0, b"x", None).await.unwrap(), None);
        let r2 = s
            .compare_and_put("/a", r1, b"2", None)
            .await
            .unwrap()
            .unwrap();
        assert!(r2 > r1);
        assert_eq!(s.get("/a").await.unwrap().unwrap().value, b"2");
        let lease = s.grant(3).await.unwrap();
        s.put("/p/x", b"x", Some(lease)).await.unwrap();
        s.put("/p/y", b"y", None).await.unwrap();
        s.put("/q", b"q", None).await.unwrap();
        let keys: Vec<_> = s
            .prefix("/p/")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["/p/x", "/p/y"]);
        s.expire(lease);
        assert!(!s.keepalive(lease).await.unwrap());
        assert_eq!(s.prefix("/p/").await.unwrap().len(), 1);
        s.set_reachable(false);
        assert!(matches!(s.get("/a").await, Err(StoreError::Unavailable(_))));
        s.set_reachable(true);
        s.after_next_write(|w| w.put("/a", b"theirs"));
        let mine = s
            .compare_and_put("/a", r2, b"mine", None)
            .await
            .unwrap()
            .unwrap();
        let now = s.get("/a").await.unwrap().unwrap();
        assert_eq!(now.value, b"theirs");
        assert!(now.revision > mine);
    }
}
