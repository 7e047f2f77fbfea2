import CPMLL
package import PMLLCore

/// What a serializable transaction has read from the committed store: the version of each
/// key (0: absent) and each key list it took. A class so that reading stays a non-mutating
/// call on the borrowed transaction.
///
/// Validation follows NOrec: every read made under the store lock first checks whether
/// anything committed since the reads were last known valid (the store's commit sequence);
/// if so, all earlier reads are checked again. So a body never sees two reads that no single
/// moment of the store had (a conflict is thrown into it instead), and a commit whose
/// sequence has not moved since the last read needs no validation at all.
package final class ReadSet {
    struct Scan {
        let prefix: String
        let keys: [String]
        let keysetAt: UInt64
    }

    /// In read order. Small read sets are searched linearly (short keys compare as two
    /// words); an index is built once the set grows past `indexedAbove`.
    // One thread uses a read set (the transaction's), so the dynamic exclusivity checks of
    // class properties would only cost time on every read.
    @exclusivity(unchecked) private(set) var versions: [(key: String, version: UInt64)] = []
    @exclusivity(unchecked) private var index: [String: Int]?
    private static let indexedAbove = 16
    @exclusivity(unchecked) private(set) var scans: [Scan] = []
    /// The commit sequence at which every read was last known valid.
    @exclusivity(unchecked) private(set) var validAt: UInt64 = 0
    /// Set once a read found an earlier one changed: the transaction can no longer commit,
    /// even if the body swallowed the conflict thrown at it.
    @exclusivity(unchecked) private(set) var conflict: String?
    let attempt: Int

    init(attempt: Int) {
        self.attempt = attempt
        versions.reserveCapacity(Self.indexedAbove / 2)   // one allocation for a typical transaction
    }

    var isEmpty: Bool { versions.isEmpty && scans.isEmpty }

    /// Keeps the first version read (a later read of the same key passed revalidation, so
    /// it saw the same one).
    func record(_ key: String, version: UInt64) {
        if index != nil {
            if index![key] == nil { index![key] = versions.count; versions.append((key, version)) }
            return
        }
        if versions.contains(where: { $0.key == key }) { return }
        versions.append((key, version))
        if versions.count > Self.indexedAbove {
            index = Dictionary(versions.indices.map { (versions[$0].key, $0) }, uniquingKeysWith: { a, _ in a })
        }
    }

    func record(scanOf prefix: String, keys: [String], keysetAt: UInt64) {
        scans.append(Scan(prefix: prefix, keys: keys, keysetAt: keysetAt))
    }

    /// Called under the store lock before each read and at commit. Throws the conflict if
    /// a read no longer holds; returns the store's commit sequence.
    @discardableResult
    func revalidate(_ store: StateStore, pool: Pool) throws(PMLLError) -> UInt64 {
        if let conflict { throw .transactionConflict(key: conflict, attempts: attempt) }
        let now = store.commitSequence
        if isEmpty || now == validAt { validAt = now; return now }
        if let changed = try firstChanged(store) {
            conflict = changed
            if !pool.isReadOnly { pmll_add64(&pool.ownLogHeader(store).pointee.conflicts, 1) }
            pool.telemetry.conflicts.increment()
            CrashPoint.hit("tx.conflict")
            throw .transactionConflict(key: changed, attempts: attempt)
        }
        validAt = now
        return now
    }

    /// The first read (a key, or `prefix*` for a key list) that the store no longer agrees with.
    private func firstChanged(_ store: StateStore) throws(PMLLError) -> String? {
        for (key, version) in versions where try store.currentVersion(key) != version { return key }
        guard !scans.isEmpty else { return nil }
        let keyset = store.keysetChanges
        for scan in scans where scan.keysetAt != keyset {
            if try store.keys(prefix: scan.prefix, skippingDamaged: false) != scan.keys { return scan.prefix + "*" }
        }
        return nil
    }
}

extension StateStore {
    /// The version of `key`'s committed record, 0 if it has none.
    package func currentVersion(_ key: String) throws(PMLLError) -> UInt64 {
        let view = self.view
        guard let i = try find(key, in: view).found else { return 0 }
        return view.slot(i).pointee.version
    }

    /// The committed keys starting with `prefix`, sorted (the caller holds the store lock).
    package func keys(prefix: String, skippingDamaged: Bool) throws(PMLLError) -> [String] {
        var keys: [String] = []
        let wanted = Array(prefix.utf8)
        let view = self.view
        memory.prefetch(view.index)
        for i in 0..<view.capacity where view.slot(i).pointee.state == PMLL_KEY_USED {
            let bytes: [UInt8]
            do throws(PMLLError) { bytes = try key(of: i) } catch {
                if skippingDamaged { continue }
                throw error
            }
            if bytes.starts(with: wanted) { keys.append(String(decoding: bytes, as: UTF8.self)) }
        }
        return keys.sorted()
    }
}
