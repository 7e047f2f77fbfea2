import Foundation
public import PMLLCore
import PMLLStore

/// A transaction over an etcd pool's state keys (`PREFIX/state/KEY`): reads see the
/// cluster's latest committed values; writes are staged and commit in one etcd Txn that
/// is compared on the mod revision of every key read (serializable, as the local store's
/// transactions) and on every fence (the lock acquisitions it was made under).
public struct EtcdTransaction: Sendable {
    let pool: EtcdPool
    var reads: [String: Int64] = [:]          // key → mod revision seen (0: absent)
    var writes: [String: [UInt8]?] = [:]      // nil: remove

    /// The value of `key` as this transaction sees it (its own writes first).
    public mutating func value(for key: String) async throws(PMLLError) -> [UInt8]? {
        try StateKey.validate(key)
        if let staged = writes[key] { return staged }
        let answer = try await pool.gateway.call("/v3/kv/range", RangeRequest(key: EtcdBytes(pool.keys.state(key))), as: RangeResponse.self)
        let kv = answer.all.first
        if reads[key] == nil { reads[key] = kv?.modRevision ?? 0 }
        return kv?.valueBytes
    }

    public mutating func set(_ key: String, _ value: [UInt8]) throws(PMLLError) {
        try StateKey.validate(key)
        guard value.count <= StateKey.valueLimit else { throw .valueTooLarge(key: key, bytes: value.count, limit: StateKey.valueLimit) }
        writes[key] = .some(value)
    }

    public mutating func set(_ key: String, _ value: String) throws(PMLLError) { try set(key, Array(value.utf8)) }

    public mutating func remove(_ key: String) throws(PMLLError) {
        try StateKey.validate(key)
        writes[key] = .some(nil)
    }
}

enum StateKey {
    /// etcd's default request limit is 1.5 MiB; a value must fit with its key and the Txn.
    static let valueLimit = 1 << 20
    /// The local store's key rules (user keys: `pmll:` is reserved for the library).
    static func validate(_ key: String) throws(PMLLError) { try StateStore.validate(key: key, user: true) }
}

extension EtcdPool {
    /// Runs `body` and commits what it staged atomically, guarded by `fences` (the grants of
    /// the locks it runs under: ``EtcdLockGrant/fence``). A commit whose fence no longer
    /// holds — the lock's lease expired and, perhaps, another process holds it now — writes
    /// nothing and throws ``PMLLError/lockLost(lock:token:reason:)``. A commit whose reads
    /// changed under it re-runs `body` (up to `attempts` times, with backoff), then throws
    /// ``PMLLError/transactionConflict(key:attempts:)``.
    @discardableResult
    public func transaction<R>(fencedBy fences: [EtcdFence] = [], attempts: Int = 16,
                               _ body: (inout EtcdTransaction) async throws -> R) async throws -> R {
        var resolved: [(fence: EtcdFence, key: [UInt8])] = []
        for fence in fences {
            resolved.append((fence, try await waiterKey(of: fence)))
        }
        var lastConflict = ""
        for attempt in 1...max(1, attempts) {
            var tx = EtcdTransaction(pool: self)
            let result = try await body(&tx)
            // One read, or none, is consistent by itself; several are validated together
            // (a compare-only transaction), so a read-only body also sees one snapshot.
            if tx.writes.isEmpty && tx.reads.count <= 1 && resolved.isEmpty { return result }
            var compare = resolved.map { Compare.createRevision($0.key, equals: $0.fence.token) }
            for (key, revision) in tx.reads.sorted(by: { $0.key < $1.key }) {
                compare.append(.modRevision(keys.state(key), equals: revision))
            }
            let ops: [RequestOp] = tx.writes.sorted(by: { $0.key < $1.key }).map { key, value in
                value.map { .put(PutRequest(key: EtcdBytes(keys.state(key)), value: EtcdBytes($0))) } ?? .delete(keys.state(key))
            }
            let answer = try await gateway.call("/v3/kv/txn", TxnRequest(compare: compare, success: ops,
                failure: resolved.map { .range(RangeRequest(key: EtcdBytes($0.key))) }), as: TxnResponse.self, retry: .ifNeverDelivered)
            if answer.didSucceed { return result }
            for (index, item) in resolved.enumerated() where answer.range(index)?.all.first?.createRevision != item.fence.token {
                throw PMLLError.lockLost(lock: item.fence.lock, token: item.fence.token,
                                         reason: "the acquisition no longer holds the lock (its lease expired); nothing was written")
            }
            lastConflict = tx.reads.keys.sorted().first ?? "?"
            if attempt < attempts { try await Task.sleep(for: .microseconds(Int64(200 << min(attempt, 8)) + Int64.random(in: 0...500))) }
        }
        throw PMLLError.transactionConflict(key: lastConflict, attempts: attempts)
    }

    /// Finds the waiter key of a fence given by token alone: the lock's key created at that
    /// revision. None (the acquisition ended, or never was) means the fence fails.
    private func waiterKey(of fence: EtcdFence) async throws(PMLLError) -> [UInt8] {
        if let key = fence.waiterKey { return key }
        let prefix = keys.waiters(fence.lock)
        let found = try await gateway.call("/v3/kv/range", RangeRequest(
            key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), limit: EtcdInt(1), keys_only: true,
            min_create_revision: EtcdInt(fence.token), max_create_revision: EtcdInt(fence.token)), as: RangeResponse.self)
        guard let key = found.all.first?.key.bytes else {
            throw .lockLost(lock: fence.lock, token: fence.token, reason: "no acquisition with this token holds the lock; nothing was written")
        }
        return key
    }

    /// The committed value of `key` (nil if absent).
    public func value(for key: String) async throws(PMLLError) -> [UInt8]? {
        try StateKey.validate(key)
        let answer = try await gateway.call("/v3/kv/range", RangeRequest(key: EtcdBytes(keys.state(key))), as: RangeResponse.self)
        return answer.all.first?.valueBytes
    }

    /// The state keys starting with `prefix`, sorted.
    public func stateKeys(prefix: String = "") async throws(PMLLError) -> [String] {
        let start = keys.state(prefix)
        let answer = try await gateway.call("/v3/kv/range", RangeRequest(
            key: EtcdBytes(start), range_end: EtcdBytes(prefixEnd(keys.stateRoot.count == start.count ? keys.stateRoot : start)),
            keys_only: true), as: RangeResponse.self)
        let root = keys.stateRoot.count
        return answer.all.map { String(decoding: $0.key.bytes.dropFirst(root), as: UTF8.self) }
    }
}
