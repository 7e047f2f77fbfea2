import Foundation
public import PMLLCore
public import PMLLLocks

/// A named lock of an ``EtcdPool``: etcd's mutex recipe (Docs/Etcd.md "Locks").
///
/// Each acquisition creates a waiter key under the lock's prefix, bound to the participant's
/// lease; the key with the lowest create revision holds the lock; each waiter watches only
/// its predecessor (FIFO, no thundering herd). The holder's create revision is its
/// **fencing token**, strictly increasing over the cluster's history.
public struct EtcdLock: Sendable, Hashable {
    public let pool: EtcdPool
    public let id: LockID

    public static func == (a: EtcdLock, b: EtcdLock) -> Bool { a.pool === b.pool && a.id == b.id }
    public func hash(into h: inout Hasher) {
        h.combine(ObjectIdentifier(pool))
        h.combine(id.name)
    }

    /// Holds the lock while `body` runs: waits at most `timeout` (nil: no limit; `.zero`:
    /// only if free now), honours Task cancellation (the waiter key is deleted), and
    /// releases on every exit from `body`. The grant carries the fencing token: commit
    /// through ``EtcdPool/transaction(fencedBy:_:)`` so that a holder that lost the lock
    /// (its lease expired while it was paused or cut off) cannot overwrite its successor's
    /// work. If the lock was lost while `body` ran, the release throws
    /// ``PMLLError/lockLost(lock:token:reason:)`` after `body` returned.
    @discardableResult
    public func withLock<R>(timeout: Duration? = nil, _ body: (inout EtcdLockGrant) async throws -> R) async throws -> R {
        try await hold(shared: false, timeout: timeout, body)
    }

    /// Holds the lock shared: with other shared holders, never with an exclusive one. A
    /// queued exclusive holder keeps later shared holders out, so writers are not starved. A
    /// shared holder is told of a writer's death it has not seen repaired.
    @discardableResult
    public func withSharedLock<R>(timeout: Duration? = nil, _ body: (inout EtcdLockGrant) async throws -> R) async throws -> R {
        try await hold(shared: true, timeout: timeout, body)
    }

    private func hold<R>(shared: Bool, timeout: Duration?, _ body: (inout EtcdLockGrant) async throws -> R) async throws -> R {
        try EtcdHeld.check(id)
        let pool = self.pool, id = self.id
        var grant = try await onEtcdExecutor { () async throws(PMLLError) in try await pool.acquire(id, shared: shared, timeout: timeout) }
        let result: R
        do {
            result = try await EtcdHeld.$stack.withValue(EtcdHeld.stack + [id]) { try await body(&grant) }
        } catch {
            let held = grant
            _ = try? await onEtcdExecutor { () async throws(PMLLError) in try await pool.release(held) }
            throw error
        }
        let held = grant
        try await onEtcdExecutor { () async throws(PMLLError) in try await pool.release(held) }
        return result
    }

    /// Holds the lock if it is free right now; nil without waiting otherwise.
    public func withLockIfAvailable<R>(_ body: (inout EtcdLockGrant) async throws -> R) async throws -> R? {
        do {
            return try await withLock(timeout: .zero, body)
        } catch PMLLError.timeout {
            return nil
        }
    }

    /// Who holds the lock now (nil if free).
    public func currentHolder() async throws(PMLLError) -> HolderInfo? {
        try await pool.holder(of: id.name)?.info
    }
}

/// What holding an etcd lock gives the body.
public struct EtcdLockGrant: Sendable {
    public let lock: LockID
    /// The acquisition's fencing token: the waiter key's create revision. Strictly
    /// increasing across all acquisitions of all locks of the cluster.
    public let fencingToken: Int64
    /// The previous holder died holding the lock (its lease expired), or released it
    /// marked inconsistent.
    public let previousOwnerDeath: OwnerDeath?
    /// How long the acquisition waited.
    public let waited: Duration
    /// Release the lock marked inconsistent: the next holder is told, as after a death.
    public var releaseInconsistent = false
    /// Held shared (with other readers), not exclusive.
    public let shared: Bool
    let waiterKey: [UInt8]

    init(lock: LockID, fencingToken: Int64, previousOwnerDeath: OwnerDeath?, waited: Duration, shared: Bool, waiterKey: [UInt8]) {
        self.lock = lock
        self.fencingToken = fencingToken
        self.previousOwnerDeath = previousOwnerDeath
        self.waited = waited
        self.shared = shared
        self.waiterKey = waiterKey
    }

    public mutating func markInconsistent() { releaseInconsistent = true }

    /// The guard a commit made under this grant carries.
    public var fence: EtcdFence { EtcdFence(lock: lock.name, token: fencingToken, waiterKey: waiterKey) }
}

/// A commit guard: the commit applies only while the acquisition `token` of `lock` still
/// holds it (its waiter key exists with that create revision).
public struct EtcdFence: Sendable, Hashable {
    public let lock: String
    public let token: Int64
    let waiterKey: [UInt8]?

    /// A guard from a lock name and a token alone (a script given `PMLL_FENCING_TOKEN`):
    /// the waiter key is looked up when the commit is made.
    public init(lock: String, token: Int64) {
        self.init(lock: lock, token: token, waiterKey: nil)
    }
    init(lock: String, token: Int64, waiterKey: [UInt8]?) {
        self.lock = lock
        self.token = token
        self.waiterKey = waiterKey
    }
}

/// The locks this task holds in etcd pools, for the runtime hierarchy check (the same rule
/// as the local pool's: a lock may only be taken below every lock already held).
enum EtcdHeld {
    @TaskLocal static var stack: [LockID] = []

    static func check(_ requested: LockID) throws(PMLLError) {
        if let held = stack.last(where: { $0.level >= requested.level }) {
            throw .hierarchyViolation(held: held, requested: requested)
        }
    }
}
