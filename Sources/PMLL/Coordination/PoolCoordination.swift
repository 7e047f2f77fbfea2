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

    public func execute<R: Sendable>(queue: String, kind: String, payload: [UInt8], timeout: Duration?, retry: RetryPolicy?,
                                     _ operation: (OperationInfo) async throws -> R) async throws -> R {
        try await self.queue(named: queue).execute(kind: kind, payload: payload, timeout: .some(timeout), retry: retry, operation)
    }

    public func executeBatch<R: Sendable>(queue: String, _ operations: [BatchOperation<R>], timeout: Duration?, retry: RetryPolicy?) async throws -> [Result<R, any Error>] {
        try await self.queue(named: queue).executeBatch(operations, timeout: .some(timeout), retry: retry)
    }

    public func queueStatistics(_ queue: String) async throws -> QueueStats { try self.queue(named: queue).stats }
}
