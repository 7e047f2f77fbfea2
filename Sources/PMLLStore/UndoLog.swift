package import CPMLL
package import PMLLCore

/// The undo logs of commits and growths (Docs/Transactions.md "Commit protocol"). A process
/// uses the log slot of its process-table slot modulo the slots; commits serialise on the
/// store lock, so a slot is never written by two commits at once. A log is pending while
/// `seq > done_seq` and its checksum holds; a rollback undoes its entries and then sets
/// `done_seq`, so it is idempotent.
///
/// A log larger than its 64 KiB slot continues in the slot's overflow area (a growth area of
/// kind LOG, doubled when a larger transaction needs it): entries are one byte stream, the
/// slot's part first.
extension Pool {
    /// Entry bytes that fit in a log slot after its header.
    static let slotEntryBytes = Int(PMLL_LOG_SLOT_SIZE) - MemoryLayout<pmll_log_header_t>.size

    /// Blocks a transaction allocates or frees, as the log records them.
    struct UndoExtent {
        let first: Int
        let count: Int
        let kind: UInt32
    }

    /// This process's log slot.
    func ownLogIndex(_ store: StateStore) -> Int { Int(slot.rawValue) % store.layout.logSlots }

    /// Writes and persists a pending undo log of `ranges` (old bytes) and `extents`, growing
    /// the slot's overflow area first if it needs one. Returns the log's header.
    ///
    /// `slotVersion`: the log of a commit that rewrites whole key slots (`ranges`), giving each
    /// this version, and whose commit point will be made durable lazily (Docs/Transactions.md
    /// "The lazy commit point"). Any other log's barrier also covers every log's header, so
    /// that no lazy commit point is still volatile once something else changes the store.
    @discardableResult
    func writeUndoLog(_ store: StateStore, ranges: [(offset: Int, length: Int)], extents: [UndoExtent] = [], keys: Int,
                      slotVersion: UInt64? = nil) throws(PMLLError) -> UnsafeMutablePointer<pmll_log_header_t> {
        let index = ownLogIndex(store)
        let header = store.logHeader(index)
        let entry = MemoryLayout<pmll_log_entry_t>.size
        let needed = ranges.reduce(0) { $0 + entry + ($1.length + 7) / 8 * 8 } + (extents.count + (slotVersion == nil ? 0 : 1)) * entry
        guard needed <= Int(UInt32.max), ranges.allSatisfy({ $0.length <= Int(UInt32.max) }), extents.allSatisfy({ $0.count <= Int(UInt32.max) }) else {
            throw .transactionTooLarge(keys: keys, bytes: needed, limit: Int(UInt32.max))
        }
        let overflow = needed > Self.slotEntryBytes ? try logOverflow(store, log: index, bytes: needed - Self.slotEntryBytes) : nil
        let stream = LogStream(header: header, overflow: overflow)
        var cursor = 0
        if let slotVersion {
            var e = pmll_log_entry_t(offset: slotVersion, length: 0, kind: PMLL_LOG_VERSION)
            withUnsafeBytes(of: &e) { stream.put(cursor, $0.baseAddress!, entry) }
            cursor += entry
        }
        for r in ranges {
            var e = pmll_log_entry_t(offset: UInt64(r.offset), length: UInt32(r.length), kind: PMLL_LOG_BYTES)
            withUnsafeBytes(of: &e) { stream.put(cursor, $0.baseAddress!, entry) }
            stream.put(cursor + entry, memory.base + r.offset, r.length)
            cursor += entry + (r.length + 7) / 8 * 8
        }
        for x in extents {
            var e = pmll_log_entry_t(offset: UInt64(x.first), length: UInt32(x.count), kind: x.kind)
            withUnsafeBytes(of: &e) { stream.put(cursor, $0.baseAddress!, entry) }
            cursor += entry
        }
        // The owner before the sequence that makes the log pending: a process that finds it
        // pending asks whether that owner is alive.
        pmll_store32(&header.pointee.owner_token, token.rawValue)
        header.pointee.entry_count = UInt32(ranges.count + extents.count + (slotVersion == nil ? 0 : 1))
        header.pointee.bytes = UInt32(cursor)
        pmll_store64_release(&header.pointee.seq, header.pointee.done_seq &+ 1)
        header.pointee.checksum = Self.logChecksum(header, overflow: overflow)
        let inSlot = MemoryLayout<pmll_log_header_t>.size + min(cursor, Self.slotEntryBytes)
        if slotVersion != nil || store.layout.logSlots == 1 {
            try memory.persistence.persist(UnsafeRawPointer(header), inSlot, site: "tx.log")
        } else {
            try persistLogHeaders(store, through: UnsafeRawPointer(header) + inSlot)
        }
        if let overflow, cursor > Self.slotEntryBytes {
            try memory.persistence.persist(UnsafeRawPointer(overflow), cursor - Self.slotEntryBytes, site: "tx.log")
        }
        return header
    }

    /// Makes every log's header durable, with this process's log up to `end`: the lazy commit
    /// points of commits judged by their slots (which change only those records) are durable
    /// before an exclusive commit, a growth or a rollback changes anything. One barrier: on a
    /// file, one `msync` over the log slots (it writes only their dirty pages: the headers
    /// whose commit points are not yet on disk, and this log).
    private func persistLogHeaders(_ store: StateStore, through end: UnsafeRawPointer) throws(PMLLError) {
        let first = UnsafeRawPointer(store.logHeader(0))
        let last = UnsafeRawPointer(store.logHeader(store.layout.logSlots - 1)) + MemoryLayout<pmll_log_header_t>.size
        if memory.persistence.isPmem {
            // Cache-line flushes: only the lines that matter, not the 64 KiB slots between them.
            for i in 0..<store.layout.logSlots { try memory.persistence.persist(UnsafeRawPointer(store.logHeader(i)), 8, site: "tx.log") }
            let own = store.logHeader(ownLogIndex(store))
            try memory.persistence.persist(UnsafeRawPointer(own), end - UnsafeRawPointer(own), site: "tx.log")
        } else {
            try memory.persistence.persist(first, max(last, end) - first, site: "tx.log")
        }
    }

    /// The overflow area of log slot `log`, at least `bytes` long (a growth makes or doubles it).
    private func logOverflow(_ store: StateStore, log: Int, bytes: Int) throws(PMLLError) -> UnsafeMutableRawPointer {
        if let area = store.view.logOverflow(log), Int(area.count) >= bytes { return memory.base + Int(area.offset) }
        try growLog(store, log: log, bytes: max(bytes, 2 * Int(store.view.logOverflow(log)?.count ?? 0)))
        guard let area = store.view.logOverflow(log), Int(area.count) >= bytes else {
            throw .transactionRecoveryFailed(reason: "undo log \(log) has no overflow area after growing one")
        }
        return memory.base + Int(area.offset)
    }

    /// CRC32C over the header's fields and every entry byte (the slot's part, then the overflow's).
    package static func logChecksum(_ header: UnsafeMutablePointer<pmll_log_header_t>, overflow: UnsafeRawPointer? = nil) -> UInt32 {
        var fields = (header.pointee.seq, header.pointee.owner_token, header.pointee.entry_count, header.pointee.bytes)
        var crc = withUnsafeBytes(of: &fields) { pmll_crc32c(0, $0.baseAddress, $0.count) }
        let bytes = Int(header.pointee.bytes)
        crc = pmll_crc32c(crc, UnsafeRawPointer(header) + MemoryLayout<pmll_log_header_t>.size, min(bytes, slotEntryBytes))
        if bytes > slotEntryBytes {
            // A log that claims an overflow area the directory does not name cannot match.
            guard let overflow else { return ~crc }
            crc = pmll_crc32c(crc, overflow, bytes - slotEntryBytes)
        }
        return crc
    }

    package func isPending(_ header: UnsafeMutablePointer<pmll_log_header_t>) -> Bool {
        pmll_load64_acquire(&header.pointee.done_seq) < header.pointee.seq
    }

    /// Resolves every pending log (the caller holds the store lock, so no live committer is
    /// using one): rolls it back, or, for the log of a commit that only replaced records in
    /// their slots (parallel, or exclusive) and whose records all reached them, completes it
    /// (Docs/Transactions.md "The lazy commit point"). A log whose checksum fails was torn
    /// before anything it covers was touched, and is discarded.
    package func rollBackPending() throws(PMLLError) {
        let store = try stateStore()
        // Ranges a dead process logged may lie in areas this process has not mapped yet; its
        // growths committed before its log was written, so the directory names them.
        try memory.mapping.ensureMapped(upTo: min(memory.mapping.reserved, try memory.mapping.fileSize() / PoolLayout.page * PoolLayout.page))
        let view = try GrowthDirectory.view(memory.base, layout: store.layout, poolLayout: memory.layout, path: path)
        // Logs judged by their slots after the others, the newest version first: a commit that
        // rewrote a slot after another (under its stripe, or the exclusive lock) did so only
        // once that one had returned, so judging the later one first (rolled back, it puts the
        // earlier one's record back) leaves each earlier one's slots as it left them.
        var judgedBySlots: [(log: Int, version: UInt64, entries: [UInt8])] = []
        for i in 0..<store.layout.logSlots {
            let header = store.logHeader(i)
            guard isPending(header) else { continue }
            // A commit through the redo log killed once its record was complete: the settle
            // that follows finishes it and resolves its log (pending until then, so that
            // optimistic readers keep off its slots).
            if Self.isRedoMarker(header) && view.redoArea != nil { continue }
            let overflow = view.logOverflow(i).map { UnsafeRawPointer(memory.base + Int($0.offset)) }
            if Self.logChecksum(header, overflow: overflow) == header.pointee.checksum {
                let entries = Self.entryBytes(header, overflow: overflow)
                if let version = Self.slotVersion(entries, count: Int(header.pointee.entry_count)) {
                    judgedBySlots.append((i, version, entries))
                    continue
                }
                try rollBack(header, log: i, entries: entries, store: store, view: view)
            }
            try resolved(header)
        }
        for (i, version, entries) in judgedBySlots.sorted(by: { $0.version > $1.version }) {
            let header = store.logHeader(i)
            if let kept = landedSlots(entries, count: Int(header.pointee.entry_count), version: version, view: view) {
                pmll_add64(&header.pointee.commits, 1)
                Self.logger.notice("kept an interrupted transaction: every record it wrote had reached its slot", metadata: ["log": "\(i)", "records": "\(kept)"])
                audit(.commit, .ok, "interrupted transaction of undo log \(i) kept: all \(kept) record(s) it wrote were in their slots")
            } else {
                try rollBack(header, log: i, entries: entries, store: store, view: view)
            }
            try resolved(header)
        }
        try store.refresh()
    }

    private func rollBack(_ header: UnsafeMutablePointer<pmll_log_header_t>, log i: Int, entries: [UInt8], store: StateStore, view: StoreView) throws(PMLLError) {
        let restored = try undo(header, log: i, entries: entries, store: store, view: view)
        try persist(restored, site: "tx.rollback")
        CrashPoint.hit("tx.rolled-back")
        Self.logger.notice("rolled back an interrupted transaction", metadata: ["log": "\(i)", "entries": "\(header.pointee.entry_count)"])
        telemetry.rollbacks.increment()
        audit(.rollback, .ok, "interrupted transaction of undo log \(i) rolled back (\(header.pointee.entry_count) entries)")
    }

    /// The log's commit point, durable: it is no longer pending.
    private func resolved(_ header: UnsafeMutablePointer<pmll_log_header_t>) throws(PMLLError) {
        pmll_store64_release(&header.pointee.done_seq, header.pointee.seq)
        try memory.persistence.persist(UnsafeRawPointer(header), 8, site: "tx.rollback-done")
    }

    /// A log's entry bytes, the slot's part and then the overflow's, as one array.
    private static func entryBytes(_ header: UnsafeMutablePointer<pmll_log_header_t>, overflow: UnsafeRawPointer?) -> [UInt8] {
        let total = Int(header.pointee.bytes)
        var entries = [UInt8](repeating: 0, count: total)
        entries.withUnsafeMutableBytes { raw in
            let inSlot = min(total, Self.slotEntryBytes)
            raw.baseAddress!.copyMemory(from: UnsafeRawPointer(header) + MemoryLayout<pmll_log_header_t>.size, byteCount: inSlot)
            if total > inSlot, let overflow { (raw.baseAddress! + inSlot).copyMemory(from: overflow, byteCount: total - inSlot) }
        }
        return entries
    }

    /// The version a slot-only commit's log gave its slots (its first entry), or nil for any other log.
    private static func slotVersion(_ entries: [UInt8], count: Int) -> UInt64? {
        guard count > 0, entries.count >= MemoryLayout<pmll_log_entry_t>.size else { return nil }
        let e = entries.withUnsafeBytes { $0.loadUnaligned(as: pmll_log_entry_t.self) }
        return e.kind == PMLL_LOG_VERSION ? e.offset : nil
    }

    /// How many slots a slot-only commit's log names, if each of them holds an intact record
    /// (its checksum) of at least `version`: then every write of the commit reached its slot
    /// (a record of a later version was written there only after this commit had returned).
    /// nil if any did not: the commit was cut short, and is rolled back.
    private func landedSlots(_ entries: [UInt8], count: Int, version: UInt64, view: StoreView) -> Int? {
        let entry = MemoryLayout<pmll_log_entry_t>.size
        var cursor = entry, kept = 0
        for _ in 1..<count {
            guard cursor + entry <= entries.count else { return nil }
            let e = entries.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: cursor, as: pmll_log_entry_t.self) }
            let offset = Int(clamping: e.offset), length = Int(e.length)
            guard e.kind == PMLL_LOG_BYTES, length == view.slotWidth, view.index.contains(offset),
                  (offset - view.index.lowerBound) % view.slotWidth == 0 else { return nil }
            let s = (memory.base + offset).assumingMemoryBound(to: pmll_key_slot_t.self)
            let recordLength = Int(s.pointee.key_length) + Int(s.pointee.value_length)
            guard s.pointee.state == PMLL_KEY_USED, s.pointee.block_count == 0, s.pointee.version >= version,
                  recordLength <= view.inlineMax,
                  StateStore.checksum(s, record: UnsafeRawBufferPointer(start: StateStore.inlineRecord(s), count: recordLength)) == s.pointee.checksum
            else { return nil }
            kept += 1
            cursor += entry + (length + 7) / 8 * 8
        }
        return kept > 0 ? kept : nil
    }

    /// Undoes a log's entries; returns the ranges it wrote.
    private func undo(_ header: UnsafeMutablePointer<pmll_log_header_t>, log i: Int, entries: [UInt8], store: StateStore,
                      view: StoreView) throws(PMLLError) -> [(offset: Int, length: Int)] {
        let total = entries.count
        var restored: [(offset: Int, length: Int)] = []
        var cursor = 0
        let entry = MemoryLayout<pmll_log_entry_t>.size
        func damaged() -> PMLLError { .transactionRecoveryFailed(reason: "undo log \(i) has an entry outside the store tables") }
        for _ in 0..<header.pointee.entry_count {
            guard cursor + entry <= total else { throw damaged() }
            let e = entries.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: cursor, as: pmll_log_entry_t.self) }
            let offset = Int(clamping: e.offset), length = Int(e.length)
            switch e.kind {
            case PMLL_LOG_BYTES:
                let inIndex = store.layout.index.contains(offset) && offset + length <= store.layout.index.upperBound
                let inBitmap = store.layout.bitmap.contains(offset) && offset + length <= store.layout.bitmap.upperBound
                let inCensus = offset == store.censusRange.lowerBound && length == store.censusRange.count
                let inBlocks = store.layout.blocks.contains(offset) && offset + length <= store.layout.blocks.upperBound   // objects
                let inDirectory = offset == store.directoryRange.lowerBound && length == store.directoryRange.count
                let inAreas = offset >= memory.layout.growthStart && offset + length <= memory.mapping.length
                guard inIndex || inBitmap || inCensus || inBlocks || inDirectory || inAreas, cursor + entry + length <= total else { throw damaged() }
                entries.withUnsafeBytes { (memory.base + offset).copyMemory(from: $0.baseAddress! + cursor + entry, byteCount: length) }
                restored.append((offset, length))
                cursor += entry + (length + 7) / 8 * 8
            case PMLL_LOG_ALLOCATED, PMLL_LOG_FREED:
                guard view.extentExists(first: offset, count: length) else { throw damaged() }
                let set = e.kind == PMLL_LOG_FREED
                for b in offset..<(offset + length) {
                    let byte = view.bitmapByte(b / 8), bit = UInt8(1 << (b % 8))
                    byte.pointee = set ? byte.pointee | bit : byte.pointee & ~bit
                }
                restored += Self.bitmapRanges(view, bytes: Array(Set((offset..<(offset + length)).map { $0 / 8 })).sorted())
                cursor += entry
            case PMLL_LOG_VERSION:
                cursor += entry   // the version the commit wrote, not an old value
            default:
                throw .transactionRecoveryFailed(reason: "undo log \(i) has an entry of unknown kind \(e.kind)")
            }
        }
        return restored
    }
}

/// A log's entry bytes as one stream: the slot's part after its header, then the overflow area.
struct LogStream {
    let slot: UnsafeMutableRawPointer
    let overflow: UnsafeMutableRawPointer?

    init(header: UnsafeMutablePointer<pmll_log_header_t>, overflow: UnsafeMutableRawPointer?) {
        slot = UnsafeMutableRawPointer(header) + MemoryLayout<pmll_log_header_t>.size
        self.overflow = overflow
    }

    /// Copies `count` bytes from `source` to stream position `at` (the caller made the
    /// overflow area large enough for every position it writes).
    func put(_ at: Int, _ source: UnsafeRawPointer, _ count: Int) {
        let inSlot = max(0, min(count, Pool.slotEntryBytes - at))
        if inSlot > 0 { (slot + at).copyMemory(from: source, byteCount: inSlot) }
        if count > inSlot { (overflow! + (at + inSlot - Pool.slotEntryBytes)).copyMemory(from: source + inSlot, byteCount: count - inSlot) }
    }
}
