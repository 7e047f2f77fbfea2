import CPMLL
public import PMLLCore
import PMLLLocks

/// A transaction over the pool's state store. Writes are buffered and reads see them; the
/// whole set commits atomically when the `transaction` body returns, or not at all if it
/// throws or the process dies at any instruction (Docs/Transactions.md).
///
/// Serializable unless asked otherwise: the commit checks that nothing the body read has
/// changed since (``TransactionIsolation``).
///
/// Noncopyable and lent `inout` to the body: it cannot escape the transaction.
public struct Transaction: ~Copyable {
    package let pool: Pool
    /// nil: isolation `.none`.
    let reads: ReadSet?
    /// Each key written, in the order of its first write, with its last value (nil: removed).
    /// Searched in order while short: comparing a few short keys costs less than hashing one,
    /// and a table beside the list was two more allocations per transaction.
    private(set) var plannedWrites: [(key: String, value: [UInt8]?)] = []
    /// Where each key lies in `plannedWrites`, once there are more than `indexedAbove`.
    private var index: [String: Int]?
    private static let indexedAbove = 8
    /// Keys whose value was verified against a signature, and the public key that signed it.
    private(set) var signers: [String: String] = [:]

    init(pool: Pool, reads: ReadSet?) {
        self.pool = pool
        self.reads = reads
    }

    /// The value of `key`, or nil if it has none: this transaction's own write if any,
    /// else the committed value (checked against its checksum). In a serializable
    /// transaction, throws ``PMLLError/transactionConflict(key:attempts:)`` if an earlier read
    /// has changed since (`transaction` then runs the body again).
    public func get(_ key: String) throws(PMLLError) -> [UInt8]? {
        try StateStore.validate(key: key)
        if let n = position(of: key) { return plannedWrites[n].value }
        return try pool.readCommitted(key, tracking: reads)
    }

    public func getString(_ key: String) throws(PMLLError) -> String? {
        try get(key).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Sets `key` (1–255 bytes of UTF-8, no NUL, not starting with `pmll:`) to `value`
    /// (at most 64 MiB; the store grows to hold it).
    public mutating func set(_ key: String, _ value: [UInt8]) throws(PMLLError) {
        try StateStore.validate(key: key, user: true)
        guard value.count <= Int(PMLL_VALUE_MAX) else { throw .valueTooLarge(key: key, bytes: value.count, limit: Int(PMLL_VALUE_MAX)) }
        record(key, value)
    }

    public mutating func set(_ key: String, _ value: String) throws(PMLLError) {
        try set(key, Array(value.utf8))
    }

    /// Removes `key` (no effect if it has no value).
    public mutating func delete(_ key: String) throws(PMLLError) {
        try StateStore.validate(key: key, user: true)
        record(key, nil)
    }

    /// The library's own records (`pmll:` keys).
    package mutating func setInternal(_ key: String, _ value: [UInt8]) throws(PMLLError) {
        guard value.count <= Int(PMLL_VALUE_MAX) else { throw .valueTooLarge(key: key, bytes: value.count, limit: Int(PMLL_VALUE_MAX)) }
        record(key, value)
    }

    package mutating func deleteInternal(_ key: String) throws(PMLLError) { record(key, nil) }

    /// Keys with `prefix`, as this transaction sees them, sorted.
    public func keys(prefix: String = "") throws(PMLLError) -> [String] {
        var keys = Set(try pool.committedKeys(prefix: prefix, tracking: reads))
        for (key, value) in plannedWrites where key.hasPrefix(prefix) {
            if value == nil { keys.remove(key) } else { keys.insert(key) }
        }
        return keys.sorted()
    }

    private static let firstCapacity = 4

    private mutating func record(_ key: String, _ value: [UInt8]?) {
        if let n = position(of: key) {
            plannedWrites[n].value = value
        } else {
            // Room for a few at the first: grown one by one, the list was allocated twice by a
            // transaction of two writes.
            if plannedWrites.isEmpty { plannedWrites.reserveCapacity(Self.firstCapacity) }
            plannedWrites.append((key, value))
            if index != nil {
                index![key] = plannedWrites.count - 1
            } else if plannedWrites.count > Self.indexedAbove {
                index = Dictionary(uniqueKeysWithValues: plannedWrites.indices.map { (plannedWrites[$0].key, $0) })
            }
        }
        if !signers.isEmpty { signers[key] = nil }
    }

    private func position(of key: String) -> Int? {
        if let index { return index[key] }
        return plannedWrites.firstIndex { $0.key == key }
    }

    /// Sets `key` to a value whose signature by `signer` (a minisign public key's base64 line)
    /// the caller verified.
    package mutating func set(_ key: String, _ value: [UInt8], signedBy signer: String) throws(PMLLError) {
        try set(key, value)
        signers[key] = signer
    }

    /// The access policy's say on these writes (who may write the keys, which need a signature).
    func authorize() throws(PMLLError) {
        guard !plannedWrites.isEmpty else { return }
        if pool.isReadOnly { throw .readOnlyPool(path: pool.path, operation: "commit a transaction") }
        guard try pool.access.policy(pool) != nil else { return }
        for (key, value) in plannedWrites {
            try pool.access.check(pool, .stateWrite(key: key))
            if value != nil {
                try pool.access.requireSignature(pool, .stateWrite(key: key), signer: signers[key], subject: "the value of key '\(key)'")
            }
        }
    }
}

extension Pool {
    /// Runs `body` as one transaction: its writes commit atomically when it returns, and are
    /// discarded if it throws (the error is rethrown). Serializable by default: if another
    /// transaction changed something the body read before this one commits, nothing is
    /// written and the body runs again after a backoff (``TransactionOptions/retry``); when
    /// the retries run out, ``PMLLError/transactionConflict(key:attempts:)`` is thrown. So the
    /// body must have no effects outside the transaction. If the body throws after reading
    /// something that has changed since, it also runs again (its error came from a view of
    /// the store that is gone). Not reentrant: a transaction inside another on the same
    /// thread throws ``PMLLError/nestedTransaction``.
    public func transaction<R>(options: TransactionOptions = TransactionOptions(), _ body: (inout Transaction) throws -> R) throws -> R {
        guard pmll_tx_depth_get() == 0 else { throw PMLLError.nestedTransaction }
        pmll_tx_depth_set(1)
        defer { pmll_tx_depth_set(0) }
        try storeReady(probeAtOnce: false)
        var attempt = 1
        while true {
            let reads = options.isolation == .serializable ? ReadSet(attempt: attempt) : nil
            var tx = Transaction(pool: self, reads: reads)
            let conflict: String
            do {
                let result = try body(&tx)
                try tx.authorize()
                try commit(tx.plannedWrites, reads: reads)
                return result
            } catch {
                guard let reads else { throw error }
                if case let .transactionConflict(key, _)? = error as? PMLLError {
                    conflict = key
                } else if let stale = try staleRead(reads) {
                    conflict = stale
                } else {
                    throw error
                }
            }
            guard attempt <= options.retry.maxRetries else { throw PMLLError.transactionConflict(key: conflict, attempts: attempt) }
            if !isReadOnly { pmll_add64(&ownLogHeader(store).pointee.retries, 1) }
            options.retry.delay(beforeRetry: attempt).sleepThread()
            attempt += 1
        }
    }

    /// ``transaction(options:_:)`` with the default retries and the given isolation.
    public func transaction<R>(isolation: TransactionIsolation, _ body: (inout Transaction) throws -> R) throws -> R {
        try transaction(options: TransactionOptions(isolation: isolation), body)
    }

    /// A transaction of the library's own (it may run inside a user's synchronous scope on
    /// another thread, so it does not take part in the nesting check). Not tracked: the
    /// library's records are written under the lock of what they describe.
    package func internalTransaction(_ body: (inout Transaction) throws(PMLLError) -> Void) throws(PMLLError) {
        try storeReady()
        var tx = Transaction(pool: self, reads: nil)
        try body(&tx)
        try commit(tx.plannedWrites)
    }

    /// The committed value of `key` (a one-read transaction).
    public func value(for key: String) throws(PMLLError) -> [UInt8]? {
        try StateStore.validate(key: key)
        try storeReady()
        return try readCommitted(key)
    }

    /// Calls `body` with the committed value of `key` where it lies in the pool (no copy; nil:
    /// no value), checked against its checksum first: a large value can be written out
    /// without a copy of it in memory. Commits wait while `body` runs (the store lock is held),
    /// so write the bytes out and return; the pointer is not valid afterwards. A read-only
    /// participant gets a copy.
    public func withValue<R>(for key: String, _ body: (UnsafeRawBufferPointer?) throws -> R) throws -> R {
        try StateStore.validate(key: key)
        try storeReady()
        if isReadOnly {
            guard let copy = try value(for: key) else { return try body(nil) }
            return try copy.withUnsafeBytes { try body($0) }
        }
        let store = try stateStore()
        let bytes = Array(key.utf8)
        var outcome: Result<R, any Error>?
        try withStoreLock { () throws(PMLLError) in
            guard let i = try store.find(bytes).found else {
                outcome = Result { try body(nil) }
                return
            }
            let record = try store.recordInPlace(i)
            outcome = Result { try body(UnsafeRawBufferPointer(rebasing: record[bytes.count...])) }
        }
        return try outcome!.get()
    }

    /// Space used and free in the state store.
    public func storeUsage() throws(PMLLError) -> StoreUsage {
        let store = try stateStore()
        return try withStoreLock { () throws(PMLLError) -> StoreUsage in try store.usage() }
    }
}

