public import PMLLCore
import PMLLLocks
public import PMLLQueues
import PMLLStore

/// The local pool under the backend-neutral interface (Docs/Etcd.md "One interface").
extension Pool: CoordinationPool {
    public var address: String { path }

    public func withLock<R>(named name: String, level: LockLevel, shared: Bool, timeout: Duration?,
                            _ body: (LockHold) async throws -> R) async throws -> R {
        let handle = try lock(named: name, level: level)
        let hold = { (grant: inout LockGrant) async throws -> R in
            try await body(LockHold(lock: handle.id, shared: shared, previousOwnerDeath: grant.previousOwnerDeath, fencingToken: nil))
        }
        return shared ? try await handle.withSharedLock(timeout: timeout, hold) : try await handle.withLock(timeout: timeout, hold)
    }

    public func update(_ key: String, fencedBy hold: LockHold?, _ change: @Sendable ([UInt8]?) throws -> [UInt8]?) async throws {
        try transaction { tx in
            if let value = try change(try tx.get(key)) { try tx.set(key, value) } else { try tx.delete(key) }
        }
    }

    public func stateValue(for key: String) async throws -> [UInt8]? { try value(for: key) }

    /// Optimistic, as the C interface's transactions: reads take no lock, the commit
    /// validates them (``DetachedTransaction``), a conflict runs `body` again. Holds need no
    /// fence here: a local hold ends only with its process.
    public func transaction<R: Sendable>(fencedBy holds: [LockHold], _ body: (any StateTransaction) async throws -> R) async throws -> R {
        let attempts = 16
        var lastConflict = PMLLError.transactionConflict(key: "?", attempts: attempts)
        for attempt in 1...attempts {
            let tx = LocalStateTransaction(try DetachedTransaction(pool: self))
            let result = try await body(tx)
            do {
                try tx.detached.commit()
                return result
            } catch PMLLError.transactionConflict(let key, _) {
                lastConflict = .transactionConflict(key: key, attempts: attempts)
            }
            if attempt < attempts { try await Task.sleep(for: RetryPolicy(maxRetries: attempts, baseDelay: .microseconds(50), maxDelay: .milliseconds(20)).delay(beforeRetry: attempt)) }
        }
        throw lastConflict
    }

    public func execute<R: Sendable>(queue: String, kind: String, payload: [UInt8], timeout: Duration?, retry: RetryPolicy?,
                                     _ operation: (OperationInfo) async throws -> R) async throws -> R {
        try await self.queue(named: queue).execute(kind: kind, payload: payload, timeout: .some(timeout), retry: retry, operation)
    }

    public func executeBatch<R: Sendable>(queue: String, _ operations: [BatchOperation<R>], timeout: Duration?, retry: RetryPolicy?) async throws -> [Result<R, any Error>] {
        try await self.queue(named: queue).executeBatch(operations, timeout: .some(timeout), retry: retry)
    }

    public func queueStatistics(_ queue: String) async throws -> QueueStats { try self.queue(named: queue).stats }
}

/// A local transaction driven call by call, under the backend-neutral protocol.
final class LocalStateTransaction: StateTransaction {
    let detached: DetachedTransaction
    init(_ detached: DetachedTransaction) { self.detached = detached }
    func value(for key: String) async throws -> [UInt8]? { try detached.get(key) }
    func set(_ key: String, _ value: [UInt8]) throws { try detached.set(key, value) }
    func remove(_ key: String) throws { try detached.delete(key) }
}
