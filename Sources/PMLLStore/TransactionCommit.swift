import CPMLL
package import PMLLCore
import PMLLLocks

/// Commit and rollback of state-store transactions (Docs/Transactions.md).
///
/// Under the store lock (a robust lock, taken for microseconds plus the barriers):
/// 1. plan: find or pick slots, allocate new extents (never blocks freed by this commit),
///    compute the new slot and bitmap bytes;
/// 2. undo log: old contents of every slot and bitmap byte range that will change, with a
///    header (seq = done_seq + 1, CRC32C over everything) → barrier 1;
/// 3. apply: write the new extents, slots and bitmap bytes → barrier 2 (one msync span);
/// 4. commit point: done_seq = seq, one aligned 8-byte store → barrier 3.
/// A log is pending while seq > done_seq and its checksum holds; rollback copies the old
/// bytes back and then sets done_seq, so it is idempotent.
extension Pool {
    package func stateStore() throws(PMLLError) -> StateStore {
        let store = self.store
        guard store.exists else { throw .noStateStore(path: path) }
        return store
    }

    /// The store lock, created on first use. `mayGrow` false while the lock table grows (the
    /// growth itself needs this lock: its entry then takes any free one).
    package func storeLock(mayGrow: Bool = true) throws(PMLLError) -> LockIndex {
        let known = services.withRequired(.store, as: StoreService.self) { $0.lockIndex.load(ordering: .acquiring) }
        if known != 0 { return LockIndex(known - 1) }
        let index = try table.index(of: "pmll:store", level: .network, create: true, creation: tableCreation, allowReserved: true,
                                    mayGrow: mayGrow)!
        services.required(.store, as: StoreService.self).lockIndex.store(index.rawValue + 1, ordering: .releasing)
        return index
    }

    /// The store lock's entry (entries never move: the mapping's base is fixed), kept so that
    /// a point read does not copy `memory` (a struct of several references) to find it.
    func storeLockEntry() throws(PMLLError) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        let known = services.withRequired(.store, as: StoreService.self) { $0.lockEntry.load(ordering: .acquiring) }
        if let known = UnsafeMutablePointer<pmll_lock_entry_t>(bitPattern: known) { return known }
        let entry = memory.lock(try storeLock())
        services.required(.store, as: StoreService.self).lockEntry.store(UInt(bitPattern: entry), ordering: .releasing)
        return entry
    }

    /// Runs `body` holding the store lock, after rolling back the transaction of a holder
    /// that died inside its commit.
    package func withStoreLock<R>(_ body: () throws(PMLLError) -> R) throws(PMLLError) -> R {
        if isReadOnly { return try readWithoutLock(body) }
        return try withStoreLock(waiting: true, body)!
    }

    /// ``withStoreLock(_:)``; without `waiting`, nil at once if another holds the lock.
    /// `forReading`: `body` only reads; the redo log is then settled only if a commit through
    /// it died half-way or the pool was reset (a read must not pay for the checkpoint that a
    /// writer owes the log).
    package func withStoreLock<R>(waiting: Bool, forReading: Bool = false, _ body: () throws(PMLLError) -> R) throws(PMLLError) -> R? {
        let index = try storeLock()
        // Once: `store` is a service lookup and a retain, and the check below runs per log.
        let store = self.store
        let taken: Taken
        if waiting {
            taken = try acquire(index: index, deadline: .max, cancellation: nil)
        } else {
            guard let fast = acquireFast(try storeLockEntry()) else { return nil }
            // Owning the word keeps new readers out, but those already in (parallel commits
            // and reads) are not waited for here.
            if pmll_lock_readers_present(fast.entry) != 0 {
                release(entry: fast.entry)
                return nil
            }
            taken = fast
        }
        var inconsistent = false
        defer { release(entry: taken.entry, inconsistent: inconsistent) }
        // Every commit and growth runs under this lock: a log still pending now was left by a
        // process that died inside one (whether or not this acquisition was told of a death:
        // the lock may have been taken over since, or the pool's volatile state reset).
        if taken.ownerDied || (0..<store.layout.logSlots).contains(where: { isPending(store.logHeader($0)) && !Self.isRedoMarker(store.logHeader($0)) }) {
            do { try rollBackPending() } catch { inconsistent = true; throw error }
        }
        // Then the redo log: no exclusive change may lie under a record a later settle would
        // redo over it, and a commit killed after its record is finished here.
        do {
            if try redoNeedsSettling(store, try store.refresh(), forReading: forReading) { try settleRedoLog(store) }
        } catch { inconsistent = true; throw error }
        return try body()
    }

    /// Called before a transaction, on open, and after a user lock is taken over from a dead
    /// holder: rolls back what a dead committer left (cheap check first). A log is pending
    /// while a live process commits (it holds the store lock): only a dead owner's needs the
    /// lock now, or every reader would queue behind every commit.
    ///
    /// `probeAtOnce` false (before each transaction): a log seen pending for the first time is
    /// taken for a live commit under way, and its owner is asked after only if the same
    /// transaction is still pending at this process's next look, and then at most every 50 ms
    /// (``StoreService/askInterval``). With commits running in
    /// parallel some log is pending most of the time, and asking is a system call. Nothing
    /// depends on this for correctness: every exclusive holder rolls back a dead one's log
    /// first, and a reader or committer that meets its stripes is told the holder died.
    package func storeReady(probeAtOnce: Bool = true) throws(PMLLError) {
        let store = self.store
        guard store.exists, !isReadOnly else { return }
        // After a volatile reset (a power failure among its causes) the redo log is settled
        // whole before anything is read: a commit that returned may be only in its record.
        if let redo = try redoHeader(store.view), redo.pointee.epoch != pmll_load64(&memory.header.pointee.volatile_resets) {
            try withStoreLock { () throws(PMLLError) in }
        }
        // Tokens repeat after a volatile reset (a power failure, a reboot): one that names this
        // participant is not a commit of its own under way here (unless a thread of this
        // process commits in parallel now), so it is checked under the lock.
        let abandoned = (0..<store.layout.logSlots).contains { i in
            let header = store.logHeader(i)
            guard isPending(header) else { return false }
            let owner = OwnerToken(rawValue: pmll_load32(&header.pointee.owner_token))
            let service = services.required(.store, as: StoreService.self)
            if owner == token { return !service.parallelLogBusy.load(ordering: .acquiring) }
            if !probeAtOnce && !service.shouldAskOwner(log: i, seq: pmll_load64(&header.pointee.seq)) { return false }
            return !processes.isAlive(owner)
        }
        if abandoned {
            try withStoreLock { () throws(PMLLError) in try rollBackPending() }
        }
    }

    /// The committed value of `key`; with `reads`, first checks that the transaction's
    /// earlier reads still hold, then records this one's version.
    package func readCommitted(_ key: String, tracking reads: ReadSet? = nil) throws(PMLLError) -> [UInt8]? {
        let store = try stateStore()
        let keyLength = key.utf8.count
        // Recorded only once the read is known to be one committed state (an optimistic
        // attempt may be discarded; its revalidation only ever errs towards a conflict, and
        // any commit it overlapped moves the sequence it compares against).
        // Captured unowned(unsafe) (this call holds all three): the body is specialised into
        // each way of reading, and each retained every strong capture again (12 retains and
        // as many releases per read, counted with uprobes).
        let (value, version, slot) = try readConsistently(key: key, store: store, sharedSafe: reads?.scans.isEmpty ?? true) {
            [unowned(unsafe) self, unowned(unsafe) store, unowned(unsafe) reads] () throws(PMLLError) -> ([UInt8]?, UInt64, UInt32) in
            let view = store.view
            try reads?.revalidateBeforeRead(store, pool: self, view: view)
            guard let i = try store.find(key, in: view).found else { return (nil, 0, .max) }
            let value = Array(UnsafeRawBufferPointer(rebasing: try store.recordInPlace(i, in: view)[keyLength...]))
            return (value, view.slot(i).pointee.version, i)
        }
        reads?.record(key, version: version, slot: slot)
        return value
    }

    /// The keys starting with `prefix`, sorted. A record that fails its checksum throws,
    /// unless `skippingDamaged` (the library's own scans: `check` reports such a record, and
    /// one damaged record must not stop recovery of everything else).
    package func committedKeys(prefix: String, skippingDamaged: Bool = false, tracking reads: ReadSet? = nil) throws(PMLLError) -> [String] {
        let store = try stateStore()
        return try withStoreLock { () throws(PMLLError) -> [String] in
            try reads?.revalidate(store, pool: self)
            let keys = try store.keys(prefix: prefix, skippingDamaged: skippingDamaged)
            reads?.record(scanOf: prefix, keys: keys, keysetAt: store.keysetChanges)
            return keys
        }
    }

    /// Whether a transaction that threw could have thrown because of a read that no longer
    /// holds (then its error came from a view of the store that never was current together
    /// with its other reads, and the body runs again). The conflicting key, or nil.
    package func staleRead(_ reads: ReadSet) throws(PMLLError) -> String? {
        guard !reads.isEmpty else { return nil }
        let store = try stateStore()
        return try withStoreLock { () throws(PMLLError) -> String? in
            do throws(PMLLError) { try reads.revalidate(store, pool: self) } catch {
                if case let .transactionConflict(key, _) = error { return key }
                throw error
            }
            return nil
        }
    }

    // MARK: commit

    private struct SlotPlan {
        let index: UInt32
        let key: [UInt8]
        let value: [UInt8]?
        let extent: (first: UInt32, count: UInt32)?
    }

    /// Commits `writes`; with `reads` (a serializable transaction), only if none of its
    /// reads changed since it made them (else ``PMLLError/transactionConflict(key:attempts:)``
    /// and nothing is written). A read-only transaction has nothing to commit: its reads
    /// were all current together when it made its last one.
    package func commit(_ writes: [(key: String, value: [UInt8]?)], reads: ReadSet? = nil, inPlace: [InPlaceWrite] = []) throws(PMLLError) {
        // A body that swallowed a conflict thrown into it must not return what it computed
        // from that view, even if it writes nothing.
        if let reads, let conflict = reads.conflict { throw .transactionConflict(key: conflict, attempts: reads.attempt) }
        guard !writes.isEmpty || !inPlace.isEmpty else { return }
        if isReadOnly { throw .readOnlyPool(path: path, operation: "commit a transaction") }
        let started = Clock.monotonicNanoseconds
        let store = try stateStore()
        if inPlace.isEmpty {
            var outcome = try commitInParallel(writes, reads: reads, store: store, started: started)
            if case .makeRedoLog = outcome {
                try prepareRedoLog(store)
                outcome = try commitInParallel(writes, reads: reads, store: store, started: started)
                if case .makeRedoLog = outcome { outcome = .exclusive }
            }
            switch outcome {
            case .committed(let finished):
                auditCommit(writes, inPlace: 0, finished: finished)
                // The redo log more than half used: one of the processes that find so settles it
                // (failing that, a commit that finds it full commits exclusively, which settles).
                if claimRedoCheckpoint(store.view) { _ = try? withStoreLock { () throws(PMLLError) in } }
                return
            case .repair(let died): try repairStripes(died)
            case .exclusive, .makeRedoLog: break
            }
        }
        let finished = try withStoreLock { () throws(PMLLError) -> Int64 in
            let version = (try reads?.revalidate(store, pool: self) ?? store.commitSequence) &+ 1
            var keysetChanged = false
            // The census: kept if intact, counted now if never kept (an older pool), left
            // alone if damaged (check reports it).
            let counts = store.censusCounts
            let census: UInt64? = counts?.keys ?? (store.census.pointee.magic == 0 ? store.countUsedSlots() : nil)
            // The journal count rides with the census: counted once if it was never kept.
            let journals: UInt64? = census == nil ? nil : counts?.journals ?? store.countJournalKeys()
            // Room first: a growth is a transaction of its own, before this one plans.
            let inserts = writes.count { $0.value != nil }
            if inserts > 0 { try ensureIndexRoom(store, live: Int(census ?? store.countUsedSlots()), inserts: inserts) }
            var view = store.view
            var censusDelta: Int64 = 0, journalDelta: Int64 = 0
            var bitmap: [Int: UInt8] = [:]            // planned bitmap bytes
            var frozen = Set<Int>()                   // blocks freed here: old values must survive a rollback
            var extents: [UndoExtent] = []            // blocks allocated and freed, for the undo log
            var reserved = Set<UInt32>()
            var plans: [SlotPlan] = []
            func allocated(_ b: Int) -> Bool { (bitmap[b / 8] ?? view.bitmapByte(b / 8).pointee) & UInt8(1 << (b % 8)) != 0 }
            func mark(_ b: Int, _ on: Bool) {
                let old = bitmap[b / 8] ?? view.bitmapByte(b / 8).pointee
                bitmap[b / 8] = on ? old | UInt8(1 << (b % 8)) : old & ~UInt8(1 << (b % 8))
            }

            for (key, value) in writes {
                let bytes = Array(key.utf8)
                let (found, _) = try store.find(bytes)
                if value == nil && found == nil { continue }
                if (value == nil) != (found == nil) {
                    keysetChanged = true
                    censusDelta += value == nil ? -1 : 1
                    if bytes.starts(with: StateStore.journalPrefixBytes) { journalDelta += value == nil ? -1 : 1 }
                }
                let index: UInt32
                if let found {
                    index = found
                    let old = view.slot(found)
                    if old.pointee.block_count > 0 && view.extentExists(first: Int(old.pointee.first_block), count: Int(old.pointee.block_count)) {
                        for b in Int(old.pointee.first_block)..<Int(old.pointee.first_block + old.pointee.block_count) {
                            mark(b, false)
                            frozen.insert(b)
                        }
                        extents.append(UndoExtent(first: Int(old.pointee.first_block), count: Int(old.pointee.block_count), kind: PMLL_LOG_FREED))
                    }
                } else {
                    index = try freeSlot(view, hash: bytes.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }, avoiding: reserved)
                }
                reserved.insert(index)
                var extent: (UInt32, UInt32)?
                // Objects always get blocks: their bytes must never move (an index that grows
                // moves its slots, and inline records with them).
                if let value, bytes.count + value.count > view.inlineMax || bytes.starts(with: Self.objectPrefixBytes) {
                    let need = (bytes.count + value.count + Int(PMLL_BLOCK_SIZE) - 1) / Int(PMLL_BLOCK_SIZE)
                    var first = findRun(need, in: view, from: store.allocationHint.load(ordering: .relaxed)) { !allocated($0) && !frozen.contains($0) }
                    if first == nil {
                        try growBlocks(store, atLeast: need)
                        view = store.view
                        first = findRun(need, in: view, from: store.allocationHint.load(ordering: .relaxed)) { !allocated($0) && !frozen.contains($0) }
                    }
                    guard let first else { throw .poolFull(table: "state store blocks", capacity: view.blockCount) }
                    store.allocationHint.store(first + need, ordering: .relaxed)
                    for b in first..<(first + need) { mark(b, true) }
                    extents.append(UndoExtent(first: first, count: need, kind: PMLL_LOG_ALLOCATED))
                    extent = (UInt32(first), UInt32(need))
                }
                plans.append(SlotPlan(index: index, key: bytes, value: value, extent: extent))
            }
            // Nothing to change (removals of keys that are not there): still a commit, audited.
            guard !plans.isEmpty || !inPlace.isEmpty else { return Clock.monotonicNanoseconds }
            let objects = try objectSlots(of: inPlace, in: store)
            let bitmapRanges = Self.bitmapRanges(view, bytes: bitmap.keys.sorted())

            // Only records rewritten in their slots (replaced, inline before and after; the
            // census as it was): the slots alone say whether it committed, as a parallel
            // commit's do, so its commit point is lazy too ("The lazy commit point").
            // Not with a redo log: after a power failure the undo logs are judged before the
            // redo log is settled, and a slot that a later record's copy left torn would roll
            // this commit back although it had returned.
            let slotsOnly = view.redoArea == nil && extents.isEmpty && inPlace.isEmpty && objects.isEmpty && !keysetChanged && counts != nil
                && plans.allSatisfy { $0.value != nil && $0.extent == nil }

            // Undo log: old slots, the blocks allocated and freed; objects' slots and the bytes written.
            let width = view.slotWidth
            var ranges: [(offset: Int, length: Int)] = plans.map { (store.offset(of: view.slot($0.index)), width) }
            ranges += objects.map { (store.offset(of: view.slot($0.slot)), width) }
            ranges += inPlace.map { ($0.object.valueOffset + $0.offset, $0.bytes.count) }
            if census != nil && !slotsOnly { ranges.append((store.censusRange.lowerBound, store.censusRange.count)) }
            let header = try writeUndoLog(store, ranges: ranges, extents: extents, keys: plans.count, slotVersion: slotsOnly ? version : nil)
            // Before any key appears or vanishes; not undone by a rollback, which only costs
            // a scan's re-check.
            if keysetChanged { pmll_add64(&header.pointee.keyset_changes, 1) }
            CrashPoint.hit("tx.undo-logged")

            // Apply.
            var touched: [(offset: Int, length: Int)] = []
            for plan in plans {
                let s = view.slot(plan.index)
                guard let value = plan.value else {
                    UnsafeMutableRawPointer(s).initializeMemory(as: UInt8.self, repeating: 0, count: width)
                    s.pointee.state = PMLL_KEY_TOMBSTONE
                    touched.append((store.offset(of: s), width))
                    continue
                }
                let record = plan.key + value
                UnsafeMutableRawPointer(s).initializeMemory(as: UInt8.self, repeating: 0, count: width)
                s.pointee.key_hash = plan.key.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }
                s.pointee.key_length = UInt32(plan.key.count)
                s.pointee.value_length = UInt32(value.count)
                s.pointee.version = version
                if let extent = plan.extent {
                    s.pointee.first_block = extent.first
                    s.pointee.block_count = extent.count
                    record.withUnsafeBytes { view.block(extent.first).copyMemory(from: $0.baseAddress!, byteCount: record.count) }
                    touched.append((store.offset(of: view.block(extent.first)), record.count))
                } else {
                    record.withUnsafeBytes { StateStore.inlineRecord(s).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                }
                s.pointee.checksum = StateStore.checksum(s, record: record)
                s.pointee.state = PMLL_KEY_USED
                touched.append((store.offset(of: s), width))
            }
            for write in inPlace {
                write.bytes.withUnsafeBytes { (write.object.bytes + write.offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                touched.append((write.object.valueOffset + write.offset, write.bytes.count))
            }
            for object in objects {
                let s = view.slot(object.slot)
                s.pointee.version = version
                let record = Array(UnsafeRawBufferPointer(start: memory.base + object.recordOffset, count: object.key.count + object.size))
                s.pointee.checksum = StateStore.checksum(s, record: record)
                touched.append((store.offset(of: s), width))
            }
            for (byte, value) in bitmap { view.bitmapByte(byte).pointee = value }
            if let census, !slotsOnly {
                store.census.pointee = StateStore.censusBytes(UInt64(clamping: Int64(clamping: census) + censusDelta),
                                                              journals: journals.map { UInt64(clamping: Int64(clamping: $0) + journalDelta) })
                touched.append((store.censusRange.lowerBound, store.censusRange.count))
            }
            CrashPoint.hit("tx.applying")
            touched += bitmapRanges
            try persist(touched, site: "tx.data")
            CrashPoint.hit("tx.applied")

            return try commitPoint(header, started: started, durable: !slotsOnly)
        }
        auditCommit(writes, inPlace: inPlace.count, finished: finished)
    }

    /// Step 4, for the exclusive and the parallel path alike: `done_seq = seq` (one aligned
    /// 8-byte store), then its barrier, unless `durable` is false (a commit that only replaced
    /// records in their slots, which already say it committed: recovery keeps it whether or
    /// not this store is on disk).
    /// Returns when it was done (CLOCK_MONOTONIC), for the commit's audit record.
    @discardableResult
    func commitPoint(_ header: UnsafeMutablePointer<pmll_log_header_t>, started: Int64, durable: Bool = true) throws(PMLLError) -> Int64 {
        pmll_store64_release(&header.pointee.done_seq, header.pointee.seq)
        pmll_add64(&header.pointee.commits, 1)
        if durable { try memory.persistence.persist(UnsafeRawPointer(header), 8, site: "tx.commit") }
        CrashPoint.hit("tx.committed")
        let finished = Clock.monotonicNanoseconds
        telemetry.commits.increment()
        telemetry.commitDuration.recordNanoseconds(finished - started)
        return finished
    }

    /// The audit record of a commit done at `finished` (CLOCK_MONOTONIC, from ``commitPoint``):
    /// its time comes from that reading, not from a second read of the clock.
    private func auditCommit(_ writes: [(key: String, value: [UInt8]?)], inPlace: Int, finished: Int64) {
        guard auditRing != nil else { return }
        audit(.commit, at: Clock.realtime(atMonotonic: finished)) { Self.describe(writes, inPlace: inPlace, into: &$0) }
    }

    /// The object of a commit's audit record, written into its slot: the keys, as many as fit
    /// in 400 bytes, then how many more.
    static func describe(_ writes: [(key: String, value: [UInt8]?)], inPlace: Int, into text: inout AuditText) {
        text.add("keys:")
        var listed = 0
        // Through the buffer, not `for w in writes`: copying an element out, and then the key
        // into a call of `add`, retained and released its key and value, four atomic operations
        // per key, half of what a commit's record cost its committer (measured).
        writes.withUnsafeBufferPointer { writes in
            for i in writes.indices {
                let deleted: Bool
                if case .none = writes[i].value { deleted = true } else { deleted = false }
                let length = 1 + writes[i].key.utf8.count + (deleted ? 10 : 0)
                if text.written + length > 400 { break }
                text.add(" ")
                text.add(writes[i].key)
                if deleted { text.add(" (deleted)") }
                listed += 1
            }
        }
        if listed < writes.count {
            text.add(" (+")
            text.add(UInt64(writes.count - listed))
            text.add(" more)")
        }
        if inPlace > 0 {
            text.add("; ")
            text.add(UInt64(inPlace))
            text.add(" in-place object write(s)")
        }
    }

    static let objectPrefixBytes = Array(objectPrefix.utf8)

    /// The objects written in place, once each, found by key (an index that grew moved their
    /// slots; their bytes, in blocks, stayed) and checked to still be what they were opened as.
    private func objectSlots(of writes: [InPlaceWrite], in store: StateStore) throws(PMLLError) -> [(slot: UInt32, key: [UInt8], recordOffset: Int, size: Int)] {
        var seen = Set<[UInt8]>(), objects: [(slot: UInt32, key: [UInt8], recordOffset: Int, size: Int)] = []
        let view = store.view
        for write in writes where seen.insert(write.object.key).inserted {
            let object = write.object
            // Objects created by earlier builds may be inline: then their bytes are in the slot,
            // and an index that grew since moved them (the object must be opened again).
            guard let slot = try store.find(object.key).found, case let s = view.slot(slot), s.pointee.state == PMLL_KEY_USED,
                  Int(s.pointee.value_length) == object.size,
                  s.pointee.block_count == 0 || view.extentExists(first: Int(s.pointee.first_block), count: Int(s.pointee.block_count)),
                  store.recordOffset(of: slot) == object.recordOffset else {
                throw .corruptRecord(key: Self.objectPrefix + object.name, reason: "the object's index slot changed under it")
            }
            objects.append((slot, object.key, object.recordOffset, object.size))
        }
        for write in writes where write.offset < 0 || write.offset + write.bytes.count > write.object.size {
            throw .valueTooLarge(key: Self.objectPrefix + write.object.name, bytes: write.offset + write.bytes.count, limit: write.object.size)
        }
        return objects
    }

    private func freeSlot(_ view: StoreView, hash: UInt32, avoiding reserved: Set<UInt32>) throws(PMLLError) -> UInt32 {
        for probe in 0..<view.capacity {
            let i = (hash &+ probe) % view.capacity
            let state = view.slot(i).pointee.state
            if state != PMLL_KEY_USED && !reserved.contains(i) { return i }
        }
        throw .poolFull(table: "state store keys", capacity: Int(view.capacity))
    }

    /// The first run of `need` free blocks inside one span, looking from `hint` on and then
    /// from the start (next fit).
    private func findRun(_ need: Int, in view: StoreView, from hint: Int, isFree: (Int) -> Bool) -> Int? {
        let start = view.span(of: hint) != nil ? hint : 0
        for (low, high) in [(start, view.blockLimit), (0, min(start + need, view.blockLimit))] {
            for span in view.spans where span.end > low && span.first < high {
                var b = max(low, span.first), run = 0, first = b
                let end = min(high, span.end)
                while b < end {
                    // Skip whole allocated bytes quickly (most of a full bitmap).
                    if run == 0 && b % 8 == 0 && b + 8 <= end && view.bitmapByte(b / 8).pointee == 0xFF && !isFree(b) {
                        b += 8
                        continue
                    }
                    if isFree(b) {
                        if run == 0 { first = b }
                        run += 1
                        if run == need { return first }
                    } else {
                        run = 0
                    }
                    b += 1
                }
            }
        }
        return nil
    }

    /// File ranges of the bitmap bytes `sorted` (global byte numbers), merged where adjacent.
    static func bitmapRanges(_ view: StoreView, bytes sorted: [Int]) -> [(offset: Int, length: Int)] {
        var result: [(offset: Int, length: Int)] = []
        for byte in sorted {
            let offset = view.bitmapOffset(byte: byte)
            if let last = result.last, last.offset + last.length == offset { result[result.count - 1].length += 1 } else { result.append((offset, 1)) }
        }
        return result
    }

    /// One barrier for all ranges: a cache flush of each on pmem, else one msync of their span.
    package func persist(_ ranges: [(offset: Int, length: Int)], site: StaticString) throws(PMLLError) {
        guard var low = ranges.first?.offset else { return }
        var high = low
        // Not map/min: two arrays made and freed on every commit.
        for r in ranges {
            low = min(low, r.offset)
            high = max(high, r.offset + r.length)
        }
        if memory.persistence.isPmem {
            for r in ranges { try memory.persistence.persist(UnsafeRawPointer(memory.base + r.offset), r.length, site: site) }
        } else {
            try memory.persistence.persist(UnsafeRawPointer(memory.base + low), high - low, site: site)
        }
    }
}
