public import PMLLCore
public import PMLLLocks
public import PMLLQueues

/// The services every PMLL backend offers, under one interface: the local pool file
/// (``Pool``, one machine) and an etcd cluster (`EtcdPool`, many machines). Code written
/// against it runs on either; `Pool.open(url:)` (product `PMLLEtcd`) picks the backend from
/// the address. Each backend's own API offers more (typed hierarchy scopes, file batches,
/// recovery with policies, fencing of commits to several keys).
public protocol CoordinationPool: AnyObject, Sendable {
    /// The pool's address: a file path, or `etcd://...`.
    var address: String { get }

    /// Holds lock `name` (created at `level` if new) while `body` runs: exclusive, or shared
    /// with other shared holders; at most `timeout` of waiting (nil: no limit); Task
    /// cancellation ends the wait. Same errors on both backends (``PMLLError``).
    func withLock<R>(named name: String, level: LockLevel, shared: Bool, timeout: Duration?,
                     _ body: (LockHold) async throws -> R) async throws -> R

    /// Replaces the value of `key` by `change(old)` (nil removes it) atomically; with a
    /// hold, only while that acquisition still holds its lock (on etcd: fenced by its token;
    /// locally the hold cannot be lost while its process lives).
    func update(_ key: String, fencedBy hold: LockHold?, _ change: @Sendable ([UInt8]?) throws -> [UInt8]?) async throws

    /// The committed value of `key`, nil if absent.
    func stateValue(for key: String) async throws -> [UInt8]?

    /// Runs `body` as one serializable transaction over state keys and commits what it
    /// staged atomically: if a key it read changed before the commit, `body` runs again (a
    /// bounded number of times, then ``PMLLError/transactionConflict(key:attempts:)``); with
    /// holds, only while those acquisitions still hold their locks (on etcd: fenced by their
    /// tokens, else ``PMLLError/lockLost(lock:token:reason:)`` and nothing written). `body`
    /// may run more than once: keep side effects out of it.
    func transaction<R: Sendable>(fencedBy holds: [LockHold], _ body: (any StateTransaction) async throws -> R) async throws -> R

    /// Runs `operation` as the next operation of hardened queue `queue`, after every
    /// operation submitted before it by any process (of any machine, on etcd); recorded
    /// persistently, retried with backoff when it throws ``RetryableError`` (`retry`, nil:
    /// the queue's default), found abandoned if its process dies. At most `timeout` of
    /// waiting for the turn (nil: no limit).
    func execute<R: Sendable>(queue: String, kind: String, payload: [UInt8], timeout: Duration?, retry: RetryPolicy?,
                              _ operation: (OperationInfo) async throws -> R) async throws -> R

    /// Runs `operations` in one turn of `queue`, one after another with nothing of another
    /// process in between; each one's outcome is reported and a failed one does not stop the
    /// rest.
    func executeBatch<R: Sendable>(queue: String, _ operations: [BatchOperation<R>], timeout: Duration?, retry: RetryPolicy?) async throws -> [Result<R, any Error>]

    /// The statistics of `queue` (counts, depth, wait and run times).
    func queueStatistics(_ queue: String) async throws -> QueueStats
}

/// One transaction of ``CoordinationPool/transaction(fencedBy:_:)``: reads see committed
/// values and this transaction's own writes; writes are staged until the commit.
public protocol StateTransaction: AnyObject {
    func value(for key: String) async throws -> [UInt8]?
    func set(_ key: String, _ value: [UInt8]) throws
    func remove(_ key: String) throws
}

/// What holding a lock tells the body, on either backend.
public struct LockHold: Sendable {
    public let lock: LockID
    public let shared: Bool
    /// The previous holder died holding the lock (or released it marked inconsistent).
    public let previousOwnerDeath: OwnerDeath?
    /// On etcd, the acquisition's fencing token (strictly increasing); nil on a local pool,
    /// whose holds end only with their process.
    public let fencingToken: Int64?

    public init(lock: LockID, shared: Bool, previousOwnerDeath: OwnerDeath?, fencingToken: Int64?) {
        self.lock = lock
        self.shared = shared
        self.previousOwnerDeath = previousOwnerDeath
        self.fencingToken = fencingToken
    }
}
