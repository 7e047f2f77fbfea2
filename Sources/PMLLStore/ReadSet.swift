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
    @exclusivity(unchecked) private(set) var versions: [(key: String, version: UInt64, slot: UInt32)] = []
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
    /// it saw the same one), and the key slot it was read in (`.max`: absent).
    func record(_ key: String, version: UInt64, slot: UInt32) {
        if index != nil {
            if index![key] == nil { index![key] = versions.count; versions.append((key, version, slot)) }
            return
        }
        if versions.contains(where: { $0.key == key }) { return }
        versions.append((key, version, slot))
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
    func revalidate(_ store: StateStore, pool: Pool, view: StoreView? = nil) throws(PMLLError) -> UInt64 {
        if let conflict { throw .transactionConflict(key: conflict, attempts: attempt) }
        let now = store.commitSequence
        if isEmpty || now == validAt { validAt = now; return now }
        try check(store, pool: pool, view: view ?? store.view)
        validAt = now
        return now
    }

    /// ``revalidate(_:pool:)`` before a point read, which needs no commit sequence: a few
    /// reads of keys are checked at their slots at once. The sequence is a sum over every
    /// process's log header, cache lines that each committing process writes, so with commits
    /// in parallel it moved before nearly every read and was loaded only to find that it had
    /// (4 % of four processes' commits, `perf`); a key's slot is written only by commits of
    /// that key.
    func revalidateBeforeRead(_ store: StateStore, pool: Pool, view: StoreView) throws(PMLLError) {
        guard scans.isEmpty && versions.count <= Self.checkedAtSlots else {
            try revalidate(store, pool: pool, view: view)
            return
        }
        if let conflict { throw .transactionConflict(key: conflict, attempts: attempt) }
        if !versions.isEmpty { try check(store, pool: pool, view: view) }
    }
    private static let checkedAtSlots = 4

    /// Throws the conflict, and counts it, if a read no longer holds.
    private func check(_ store: StateStore, pool: Pool, view: StoreView) throws(PMLLError) {
        guard let changed = try firstChanged(store, view: view) else { return }
        conflict = changed
        if !pool.isReadOnly { pmll_add64(&pool.ownLogHeader(store).pointee.conflicts, 1) }
        pool.telemetry.conflicts.increment()
        CrashPoint.hit("tx.conflict")
        throw .transactionConflict(key: changed, attempts: attempt)
    }

    /// The first read (a key, or `prefix*` for a key list) that the store no longer agrees with.
    /// A key still in the slot it was read in, at the version read, holds (no lookup);
    /// otherwise it is looked up (it may have moved, in a growth).
    private func firstChanged(_ store: StateStore, view: StoreView) throws(PMLLError) -> String? {
        for n in versions.indices where !store.holds(versions[n].key, version: versions[n].version, atSlot: versions[n].slot, in: view) {
            if try store.currentVersion(versions[n].key) != versions[n].version { return versions[n].key }
        }
        guard !scans.isEmpty else { return nil }
        let keyset = store.keysetChanges
        for scan in scans where scan.keysetAt != keyset {
            if try store.keys(prefix: scan.prefix, skippingDamaged: false) != scan.keys { return scan.prefix + "*" }
        }
        return nil
    }
}

extension StateStore {
    /// Whether slot `i` of `view` holds `key` at `version`. Versions only grow, and a key is in
    /// one slot at a time: so the key is unchanged since it was read there at that version.
    /// False says nothing (absent, moved, or changed): look the key up.
    package func holds(_ key: String, version: UInt64, atSlot i: UInt32, in view: StoreView) -> Bool {
        guard i < view.capacity else { return false }
        let s = view.slot(i)
        guard s.pointee.state == PMLL_KEY_USED, s.pointee.version == version, s.pointee.key_length == UInt32(key.utf8.count) else { return false }
        var key = key
        return key.withUTF8 { storedKeyEquals(view, i, UnsafeRawBufferPointer($0)) }
    }

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
