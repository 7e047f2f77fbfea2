public import PMLL

/// The etcd pool under the backend-neutral interface (Docs/Etcd.md "One interface").
extension EtcdPool: CoordinationPool {
    public var address: String { addressDescription }

    public func withLock<R>(named name: String, level: LockLevel, shared: Bool, timeout: Duration?,
                            _ body: (LockHold) async throws -> R) async throws -> R {
        let lock = try await lock(named: name, level: level)
        let hold = { (grant: inout EtcdLockGrant) async throws -> R in
            try await body(LockHold(lock: grant.lock, shared: grant.shared, previousOwnerDeath: grant.previousOwnerDeath, fencingToken: grant.fencingToken))
        }
        return shared ? try await lock.withSharedLock(timeout: timeout, hold) : try await lock.withLock(timeout: timeout, hold)
    }

    public func update(_ key: String, fencedBy hold: LockHold?, _ change: @Sendable ([UInt8]?) throws -> [UInt8]?) async throws {
        let fences = hold.flatMap { h in h.fencingToken.map { [EtcdFence(lock: h.lock.name, token: $0)] } } ?? []
        try await transaction(fencedBy: fences) { tx in
            if let value = try change(try await tx.value(for: key)) { try tx.set(key, value) } else { try tx.remove(key) }
        }
    }

    public func stateValue(for key: String) async throws -> [UInt8]? { try await value(for: key) }

    public func transaction<R: Sendable>(fencedBy holds: [LockHold], _ body: (any StateTransaction) async throws -> R) async throws -> R {
        let fences = holds.compactMap { h in h.fencingToken.map { EtcdFence(lock: h.lock.name, token: $0) } }
        return try await transaction(fencedBy: fences) { tx in
            let box = EtcdStateTransaction(tx)
            let result = try await body(box)
            tx = box.tx
            return result
        }
    }

    public func execute<R: Sendable>(queue: String, kind: String, payload: [UInt8], timeout: Duration?, retry: RetryPolicy?,
                                     _ operation: (OperationInfo) async throws -> R) async throws -> R {
        try await self.queue(named: queue).execute(kind: kind, payload: payload, timeout: .some(timeout), retry: retry, operation)
    }

    public func executeBatch<R: Sendable>(queue: String, _ operations: [BatchOperation<R>], timeout: Duration?, retry: RetryPolicy?) async throws -> [Result<R, any Error>] {
        try await self.queue(named: queue).executeBatch(operations, timeout: .some(timeout), retry: retry)
    }

    public func queueStatistics(_ queue: String) async throws -> QueueStats { try await self.queue(named: queue).stats }
}

extension Pool {
    /// Opens the pool at `url`: `etcd://...` (an ``EtcdPool``), else a pool file path (a
    /// local ``Pool``, created on first use). Code written against ``CoordinationPool`` runs
    /// on either.
    public static func open(url: String) async throws -> any CoordinationPool {
        if EtcdAddress.isEtcd(url) { return try await EtcdPool.open(url: url) }
        return try Pool.open(path: url)
    }
}

/// An etcd transaction under the backend-neutral protocol.
final class EtcdStateTransaction: StateTransaction {
    var tx: EtcdTransaction
    init(_ tx: EtcdTransaction) { self.tx = tx }
    func value(for key: String) async throws -> [UInt8]? { try await tx.value(for: key) }
    func set(_ key: String, _ value: [UInt8]) throws { try tx.set(key, value) }
    func remove(_ key: String) throws { try tx.remove(key) }
}
