package import CPMLL
import PMLLCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The redo log of commits on a disk (Docs/Transactions.md "The redo log").
///
/// A commit in parallel on a pool whose barriers reach a disk writes one record of its slots'
/// new bytes into a ring shared by every process, makes it durable with one flush shared with
/// every commit waiting at the time (group commit), and only then copies those bytes into its
/// slots, with no barrier of its own: one shared barrier per commit instead of two.
///
/// The records at or above the checkpoint are settled by the next holder of the store lock
/// held exclusively: each slot gets its last record's bytes where they differ, the key index
/// is made durable and the checkpoint moves to the log's end. So a commit killed once its record was complete is
/// finished by that holder; after a power failure every commit that returned is redone from
/// its durable record; and no exclusive change (insert, removal, growth, rollback) ever lies
/// under a record that could be redone over it. Log order is each slot's order of writes: a
/// commit reserves its record holding the stripes of its slots, and the next commit of a slot
/// takes the stripe after it.
extension StoreView {
    /// The redo log's area, if the pool has one.
    package var redoArea: pmll_area_t? { areas.first { $0.kind == PMLL_AREA_REDO } }
}

extension Pool {
    /// Ring bytes of a redo log made now: 16 MiB, or `PMLL_REDO_LOG=BYTES` (at least 64 KiB;
    /// tests use small rings to make it wrap).
    static let redoRingBytes: Int = {
        guard let value = Knob.redoLog.value, let bytes = Int(value) else { return 16 << 20 }
        return max(64 << 10, PoolLayout.roundUp(bytes))
    }()
    /// How long a flusher waits, at most, for records reserved before its flush and not yet
    /// complete (with more processes than cores their writers often wait for this one's core,
    /// and one flush then covers them too), and for the rest of its group (``flushRedo``).
    /// Without either wait a flush covered 2.3 records of 4 processes' (Docs/Benchmarks.md
    /// "The ceiling of group commit" and "Group commit bounded by the last flush").
    static let redoGatherNanoseconds: Int64 = 100_000

    /// Whether commits here gain from a redo log: their barriers reach a disk (not pmem, whose
    /// barrier is a cache flush of the bytes themselves, and not tmpfs, where none is made).
    var wantsRedoLog: Bool { !memory.persistence.isPmem && !memory.persistence.barriersAreSkipped && !Self.redoLogOff }

    private static let redoLogOff = Knob.redoLog.value == "off"

    /// The redo log's header: nil if the pool has no redo area, or one whose header its maker
    /// never completed (it died first, so no record was ever written there).
    func redoHeader(_ view: StoreView) throws(PMLLError) -> UnsafeMutablePointer<pmll_redo_header_t>? {
        guard let area = view.redoArea else { return nil }
        let h = (memory.base + Int(area.offset)).assumingMemoryBound(to: pmll_redo_header_t.self)
        let magic = pmll_load64_acquire(&h.pointee.magic)
        if magic == 0 { return nil }
        let capacity = h.pointee.capacity
        guard magic == PMLL_REDO_MAGIC, h.pointee.checksum == Self.redoChecksum(capacity: capacity), capacity > 0,
              capacity % UInt64(PMLL_REDO_ALIGN) == 0, capacity <= area.size - UInt64(PoolLayout.page) else {
            throw .corruptPool(path: path, reason: "the redo log's header is damaged")
        }
        return h
    }

    static func redoChecksum(capacity: UInt64) -> UInt32 {
        var fields = (PMLL_REDO_MAGIC, capacity)
        return withUnsafeBytes(of: &fields) { pmll_crc32c(0, $0.baseAddress, $0.count) }
    }

    /// Makes the redo log (the caller holds the store lock exclusively): an area named by the
    /// directory as a growth of its own, every page of it written once now (so that a flush of
    /// records writes data only: the first write to a page of a preallocated extent needs a
    /// journal entry), then its header, the magic last.
    func makeRedoLog(_ store: StateStore) throws(PMLLError) {
        let old = try store.refresh()
        if try redoHeader(old) != nil { return }
        let area: (offset: Int, size: Int)
        if let named = old.redoArea {
            area = (Int(named.offset), Int(named.size))
        } else {
            let place = try placeArea(store, old, size: PoolLayout.page + Self.redoRingBytes)
            let start = memory.base + place.offset
            pmll_populate_for_write(start, place.size)
            start.initializeMemory(as: UInt8.self, repeating: 0, count: place.size)
            try memory.persistence.persist(UnsafeRawPointer(start), place.size, site: "growth.fill")
            CrashPoint.hit("growth.filled")
            try publish(store, site: "redo log", describe: { end in "redo log made: \(place.size - PoolLayout.page) bytes of ring, file \(end) bytes" }) { d in
                let entry = pmll_area_t(offset: UInt64(place.offset), size: UInt64(place.size), kind: PMLL_AREA_REDO, first_block: 0,
                                        count: UInt32(clamping: place.size - PoolLayout.page), bitmap_bytes: 0)
                _ = Self.put(entry, reusing: place.reused, into: &d)
            }
            area = (place.offset, place.size)
        }
        let h = (memory.base + area.offset).assumingMemoryBound(to: pmll_redo_header_t.self)
        UnsafeMutableRawPointer(h).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<pmll_redo_header_t>.size)
        let align = UInt64(PMLL_REDO_ALIGN)
        let capacity = UInt64(area.size - PoolLayout.page) / align * align
        h.pointee.capacity = capacity
        h.pointee.checksum = Self.redoChecksum(capacity: capacity)
        h.pointee.epoch = pmll_load64(&memory.header.pointee.volatile_resets)
        try persistVolatileResets()
        try memory.persistence.persist(UnsafeRawPointer(h), MemoryLayout<pmll_redo_header_t>.size, site: "redo.checkpoint")
        pmll_store64_release(&h.pointee.magic, PMLL_REDO_MAGIC)
        try memory.persistence.persist(UnsafeRawPointer(h), 8, site: "redo.checkpoint")
        Self.logger.notice("redo log made", metadata: ["path": "\(path)", "bytes": "\(capacity)"])
    }

    /// Whether this process should make a redo log for a pool that has none: commits here gain
    /// from one, and making one has not failed for want of room.
    /// ``prepareRedoLog(_:)`` makes it (by the first commit that would go through it: another
    /// process may have made it since this one's view was read). A pool at its size limit, or
    /// a full file system, keeps committing without one.
    func shouldMakeRedoLog(_ view: StoreView) -> Bool {
        wantsRedoLog && view.redoArea == nil && !services.required(.store, as: StoreService.self).redoUnavailable.load(ordering: .relaxed)
    }

    func prepareRedoLog(_ store: StateStore) throws(PMLLError) {
        let service = services.required(.store, as: StoreService.self)
        guard shouldMakeRedoLog(store.view) else { return }
        do throws(PMLLError) {
            try withStoreLock { () throws(PMLLError) in try makeRedoLog(store) }
        } catch {
            switch error {
            case .sizeLimitReached, .noSpace, .poolFull:
                service.redoUnavailable.store(true, ordering: .relaxed)
                Self.logger.notice("no room for a redo log: commits make their own barriers", metadata: ["path": "\(path)", "error": "\(error)"])
            default:
                throw error
            }
        }
    }

    // MARK: commit

    enum RedoCommit {
        /// Done at this CLOCK_MONOTONIC time.
        case committed(Int64)
        /// The ring has no room until a checkpoint; the commit goes the exclusive way, which settles first.
        case full
        /// The log must be settled whole before it takes records (a volatile reset since it last was).
        case unsettled
    }

    /// Commits new records of `slots` (slot n gets `writes[n]`; their stripes held, the store lock held shared, the
    /// transaction validated) through the redo log: record, shared flush, then the slots.
    /// This process's undo-log header marks the commit under way and its commit point counts
    /// it, as a parallel commit's does.
    func commitThroughRedoLog(_ h: UnsafeMutablePointer<pmll_redo_header_t>, store: StateStore, view: StoreView, slots: [UInt32],
                              writes: [(key: String, value: [UInt8]?)], version: UInt64, started: Int64) throws(PMLLError) -> RedoCommit {
        guard h.pointee.epoch == pmll_load64(&memory.header.pointee.volatile_resets) else { return .unsettled }
        let width = view.slotWidth
        let entry = MemoryLayout<pmll_log_entry_t>.size, head = MemoryLayout<pmll_redo_record_t>.size, align = Int(PMLL_REDO_ALIGN)
        let bytes = (head + slots.count * (entry + width) + align - 1) / align * align
        let capacity = h.pointee.capacity
        _ = pmll_add32(&h.pointee.writing, 1)
        guard let position = reserveRedo(h, bytes: bytes, capacity: capacity) else {
            _ = pmll_sub32(&h.pointee.writing, 1)
            return .full
        }
        // Under way: the log header says so (its owner is asked about if it stays pending);
        // the record decides whether the commit happens.
        let log = markRedoUnderWay(store, recordComplete: false)

        let ring = UnsafeMutableRawPointer(h) + PoolLayout.page
        let at = Int(position % capacity)
        // Made here and written into the file with pwrite, not stored through the mapping: a
        // ring page written through the mapping after each flush takes a write fault (ext4's
        // page_mkwrite) and is write-protected again at the next flush in every process that
        // mapped it; a pwrite dirties the page cache alone (msync of the ring still writes
        // it: msync works on the file's dirty pages). Readers (a settle) read it mapped.
        return try withUnsafeTemporaryAllocation(byteCount: bytes, alignment: align) { buffer throws(PMLLError) -> RedoCommit in
            let record = buffer.baseAddress!
            var cursor = head
            for (n, i) in slots.enumerated() {
                let s = view.slot(i)
                var e = pmll_log_entry_t(offset: UInt64(store.offset(of: s)), length: UInt32(width), kind: PMLL_LOG_BYTES)
                withUnsafeBytes(of: &e) { (record + cursor).copyMemory(from: $0.baseAddress!, byteCount: entry) }
                // The slot as it is, with the new value: the state, the key and its hash stay, so
                // that a commit probing past the slot for another key reads the same chain.
                let copy = (record + cursor + entry).assumingMemoryBound(to: pmll_key_slot_t.self)
                UnsafeMutableRawPointer(copy).copyMemory(from: UnsafeRawPointer(s), byteCount: width)
                let data = StateStore.inlineRecord(copy)
                let keyLength = writes[n].key.utf8.count, value = writes[n].value!
                value.withUnsafeBytes { (data + keyLength).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                let end = keyLength + value.count
                (data + end).initializeMemory(as: UInt8.self, repeating: 0, count: view.inlineMax - end)
                copy.pointee.value_length = UInt32(value.count)
                copy.pointee.version = version
                copy.pointee.checksum = StateStore.checksum(copy, record: UnsafeRawBufferPointer(start: data, count: end))
                cursor += entry + width
            }
            (record + cursor).initializeMemory(as: UInt8.self, repeating: 0, count: bytes - cursor)
            let r = record.assumingMemoryBound(to: pmll_redo_record_t.self)
            r.pointee = pmll_redo_record_t(position: position, version: version, magic: PMLL_REDO_RECORD_MAGIC, count: UInt32(slots.count),
                                           bytes: UInt32(bytes), checksum: 0)
            r.pointee.checksum = Self.redoRecordChecksum(record, bytes: bytes)
            let mapped = (ring + at).assumingMemoryBound(to: pmll_redo_record_t.self)
            do throws(PMLLError) {
                try writeRecord(UnsafeRawBufferPointer(buffer), at: store.offset(of: ring + at))
            } catch {
                mapped.pointee.magic = 0   // a part of it may be there
                log.pointee.entry_count = 0
                _ = pmll_sub32(&h.pointee.writing, 1)
                throw error
            }
            pmll_store32(&log.pointee.entry_count, 1)   // after the record: complete (finished by a settle if this process dies now)
            _ = pmll_sub32(&h.pointee.writing, 1)
            CrashPoint.hit("tx.redo-logged")

            do throws(PMLLError) { try flushRedo(h, ring: ring) } catch {
                // Not known to be durable: the commit must not happen, now or at a later settle.
                mapped.pointee.magic = 0
                log.pointee.entry_count = 0
                throw error
            }
            CrashPoint.hit("tx.redo-durable")

            cursor = head
            for n in 0..<slots.count {
                (UnsafeMutableRawPointer(view.slot(slots[n]))).copyMemory(from: record + cursor + entry, byteCount: width)
                cursor += entry + width
                if n == 0 { CrashPoint.hit("tx.applying") }
            }
            CrashPoint.hit("tx.applied")
            return .committed(try commitPoint(log, started: started, durable: false))
        }
    }

    /// A record's bytes into the pool file at `offset` (in the ring), whole or an error.
    private func writeRecord(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(PMLLError) {
        var done = 0
        while done < bytes.count {
            let n = try SystemCall.libc("pwrite") {
                Int32(truncatingIfNeeded: pwrite(fd.rawValue, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done)))
            }
            guard n > 0 else { throw .systemCall(name: "pwrite", errno: .ioError) }
            done += Int(n)
        }
    }

    /// Makes this process's undo-log header a redo marker: pending, no entry bytes, and a
    /// checksum that never matches, so that recovery only ever resolves it. `recordComplete`:
    /// the slots' bytes are all in a complete record (a settle finishes the commit if this
    /// process dies now).
    private func markRedoUnderWay(_ store: StateStore, recordComplete: Bool) -> UnsafeMutablePointer<pmll_log_header_t> {
        let log = ownLogHeader(store)
        pmll_store32(&log.pointee.owner_token, token.rawValue)
        log.pointee.entry_count = recordComplete ? 1 : 0
        log.pointee.bytes = 0
        pmll_store64_release(&log.pointee.seq, log.pointee.done_seq &+ 1)
        log.pointee.checksum = ~Self.logChecksum(log)
        return log
    }

    /// Log bytes [start, start + bytes) for a record, never across the ring's end (the rest of
    /// a lap is skipped), or nil if the ring has no room before the checkpoint moves.
    private func reserveRedo(_ h: UnsafeMutablePointer<pmll_redo_header_t>, bytes: Int, capacity: UInt64) -> UInt64? {
        var tail = pmll_load64_acquire(&h.pointee.tail)
        let checkpoint = pmll_load64_acquire(&h.pointee.checkpoint)   // moves only under the exclusive lock
        while true {
            let at = tail % capacity
            let start = at + UInt64(bytes) > capacity ? tail + (capacity - at) : tail
            let end = start + UInt64(bytes)
            guard end - checkpoint <= capacity else { return nil }
            if pmll_cas64(&h.pointee.tail, &tail, end) != 0 { return start }
        }
    }

    /// The record's checksum: CRC32C of its bytes but the checksum field.
    static func redoRecordChecksum(_ raw: UnsafeRawPointer, bytes: Int) -> UInt32 {
        let field = MemoryLayout<pmll_redo_record_t>.offset(of: \pmll_redo_record_t.checksum)!
        let crc = pmll_crc32c(0, raw, field)
        return pmll_crc32c(crc, raw + field + 4, bytes - field - 4)
    }

    /// Makes this process's complete record durable, sharing the flush: a writer takes a
    /// number; it is durable once `flush_completed` reaches it. One process flushes at a time
    /// (`flushing` holds its token), first waiting up to ``redoGatherNanoseconds`` for records
    /// reserved and not yet complete, and for the *group* (the writers the last flush covered
    /// or saw arrive) to have taken numbers, but no longer than the last flush took: a writer
    /// left out waits for a whole next flush, so waiting less than one for it pays, and on a
    /// disk whose flushes are short the wait stays short (Docs/Benchmarks.md "Group commit
    /// bounded by the last flush"); it yields meanwhile, or sleeps (``sleepGatheringUntil``).
    /// Then it covers every number taken so far; the others sleep
    /// until it is done, at most one owner-check interval at a time (a flusher that died is
    /// found by its token). A writer alone is a group of one and never waits.
    private func flushRedo(_ h: UnsafeMutablePointer<pmll_redo_header_t>, ring: UnsafeMutableRawPointer) throws(PMLLError) {
        let mine = pmll_fetch_add64(&h.pointee.flush_requested, 1) + 1
        // The flusher may be asleep waiting for the group. Each side makes its store (this
        // number; its sleeper bit) and then, past a full fence, looks at the other's: one of
        // them sees the other, so it never sleeps through the number that completes its group.
        pmll_fence()
        if pmll_load32(&h.pointee.gather_word) & PMLL_WAKEWORD_SLEEPERS != 0 && Self.groupComplete(h, requested: mine) {
            _ = pmll_wakeword_bump(&h.pointee.gather_word)
        }
        let word = (UnsafeMutableRawPointer(h) + MemoryLayout<pmll_redo_header_t>.offset(of: \pmll_redo_header_t.flush_word)!)
            .assumingMemoryBound(to: UInt32.self)
        var waited = false
        while true {
            let seen = pmll_load32(word)
            if pmll_load64_acquire(&h.pointee.flush_completed) >= mine { return }
            var idle: UInt32 = 0
            let owner = pmll_load32(&h.pointee.flushing)
            if owner == 0 && pmll_cas32(&h.pointee.flushing, &idle, token.rawValue) != 0 { break }
            if owner != 0 && waited && !processes.isAlive(OwnerToken(rawValue: owner)) {
                var dead = owner
                _ = pmll_cas32(&h.pointee.flushing, &dead, 0)
                continue
            }
            var expected: UInt32 = 0
            guard pmll_wakeword_announce_sleeper(word, seen, &expected) != 0 else { continue }
            waited = pmll_futex_wait(word, expected, Clock.monotonicNanoseconds + ownerCheckNanoseconds) == -ETIMEDOUT
        }
        defer {
            pmll_store32(&h.pointee.flushing, 0)
            _ = pmll_wakeword_bump(word)
        }
        if pmll_load64_acquire(&h.pointee.flush_completed) >= mine { return }
        let covered = pmll_load64_acquire(&h.pointee.flush_started)
        let group = UInt64(min(pmll_load32(&h.pointee.group), 64))
        let start = Clock.monotonicNanoseconds
        let gatherUntil = start + Self.redoGatherNanoseconds
        let groupUntil = start + min(Self.redoGatherNanoseconds, Int64(min(pmll_load64(&h.pointee.flush_nanoseconds), 1 << 40)))
        while true {
            let now = Clock.monotonicNanoseconds
            let completing = now < gatherUntil && pmll_load32(&h.pointee.writing) > 0
            let groupShort = now < groupUntil && pmll_load64_acquire(&h.pointee.flush_requested) &- covered < group
            if !completing && !groupShort { break }
            if Self.gatherByYield ?? (now >= Self.sleepGatheringUntil.load(ordering: .relaxed)) {
                sched_yield()
                let after = Clock.monotonicNanoseconds
                if after - now > Self.slowYieldNanoseconds {
                    Self.sleepGatheringUntil.store(after + Self.sleepGatheringNanoseconds, ordering: .relaxed)
                }
                continue
            }
            var expected: UInt32 = 0
            guard pmll_wakeword_announce_sleeper(&h.pointee.gather_word, pmll_load32(&h.pointee.gather_word), &expected) != 0 else { continue }
            if Self.groupComplete(h, requested: pmll_load64_acquire(&h.pointee.flush_requested)) { break }
            _ = pmll_futex_wait(&h.pointee.gather_word, expected, completing && groupShort ? max(gatherUntil, groupUntil) : completing ? gatherUntil : groupUntil)
        }
        let upTo = pmll_load64_acquire(&h.pointee.flush_requested)
        pmll_max64(&h.pointee.flush_started, upTo)
        // The whole ring, in one call: msync writes only the dirty pages (found by the file's
        // dirty tags, not by a walk of the range), and a range from the checkpoint to the tail
        // would take two calls whenever it wraps.
        let flushStart = Clock.monotonicNanoseconds
        try memory.persistence.persist(UnsafeRawPointer(ring), Int(h.pointee.capacity), site: "tx.redo")
        let flushEnd = Clock.monotonicNanoseconds
        pmll_max64(&h.pointee.flush_completed, upTo)
        pmll_store64(&h.pointee.flush_nanoseconds, UInt64(max(0, flushEnd - flushStart)))
        _ = pmll_add64(&h.pointee.flushes, 1)
        _ = pmll_add64(&h.pointee.flushed_commits, upTo > covered ? upTo - covered : 0)
        _ = pmll_add64(&h.pointee.flush_total_ns, UInt64(max(0, flushEnd - flushStart)))
        _ = pmll_add64(&h.pointee.gather_total_ns, UInt64(max(0, flushStart - start)))
        pmll_store32(&h.pointee.group, UInt32(truncatingIfNeeded: min(pmll_load64_acquire(&h.pointee.flush_requested) &- covered, 64)))
    }

    /// A flusher waiting for its group yields its core: the writers it waits for are usually
    /// runnable there, and a yield hands it to one at once (a sleep would let the virtual CPU
    /// halt, and waking it costs more: 15 % fewer flushes a second, measured). But while other
    /// work is runnable (a build at nice 19 beside the commits), a yield hands the core to it
    /// for a whole time slice, far past the wait's bound (a third fewer flushes, measured).
    /// A yield that took longer than ``slowYieldNanoseconds`` says so, and for
    /// ``sleepGatheringNanoseconds`` after it this process's flushers sleep on `gather_word`
    /// instead (a wake word), woken by the writer that completes the group (Docs/Benchmarks.md "Group
    /// commit beside other work").
    private static let sleepGatheringUntil = Atomic<Int64>(0)
    /// `PMLL_REDO_GATHER`: always yield (true) or always sleep (false), else nil.
    private static let gatherByYield: Bool? = switch Knob.redoGather.value { case "yield": true; case "sleep": false; default: nil }
    /// Beside two nice-19 loops a yield came back within 10 µs nearly always, and after 2–4 ms
    /// (their slice) now and then; a drain step of this process's own audit thread takes a few
    /// hundred µs of its core and is no reason to sleep (at 200 µs it was: 13 % fewer flushes).
    static let slowYieldNanoseconds: Int64 = 1_000_000
    static let sleepGatheringNanoseconds: Int64 = 1_000_000_000

    /// Whether the flusher gathering now has its group: `requested` numbers taken, none
    /// still being written. The flusher asks it after announcing its sleep, a writer after
    /// taking its number; `flush_started` and `group` are the flusher's `covered` and `group`
    /// (only a flusher moves them, and it does not while it gathers).
    private static func groupComplete(_ h: UnsafeMutablePointer<pmll_redo_header_t>, requested: UInt64) -> Bool {
        pmll_load32(&h.pointee.writing) == 0
            && requested &- pmll_load64_acquire(&h.pointee.flush_started) >= UInt64(min(pmll_load32(&h.pointee.group), 64))
    }

    // MARK: settling

    /// Whether the log must be settled before an exclusive holder changes anything: it holds
    /// records above its checkpoint, must be settled whole after a reset, or a commit through
    /// it died once its record was complete (its log still pending: the settle finishes it).
    /// `forReading`: only the last two (records of commits that finished are in place already).
    func redoNeedsSettling(_ store: StateStore, _ view: StoreView, forReading: Bool = false) throws(PMLLError) -> Bool {
        guard let h = try redoHeader(view) else { return false }
        return h.pointee.epoch != pmll_load64(&memory.header.pointee.volatile_resets)
            || (!forReading && pmll_load64_acquire(&h.pointee.tail) != h.pointee.checkpoint)
            || (0..<store.layout.logSlots).contains { Self.isRedoMarker(store.logHeader($0)) && isPending(store.logHeader($0)) }
    }

    /// The undo-log headers of commits through the redo log that died once their record was
    /// complete (``isRedoMarker(_:)``, still pending): a settle finishes them.
    func pendingRedoMarkers(_ store: StateStore) -> [UnsafeMutablePointer<pmll_log_header_t>] {
        (0..<store.layout.logSlots).map { store.logHeader($0) }.filter { Self.isRedoMarker($0) && isPending($0) }
    }

    /// The undo-log header of a commit through the redo log whose record was complete: no
    /// entry bytes, one entry (``commitThroughRedoLog``). While it is pending, optimistic
    /// readers keep off the slots (its writer may have died half-way through them), and only a
    /// settle resolves it, after it has put the record's bytes in place.
    static func isRedoMarker(_ header: UnsafeMutablePointer<pmll_log_header_t>) -> Bool {
        header.pointee.bytes == 0 && header.pointee.entry_count == 1
    }

    /// Puts in place what the records at or above the checkpoint say, makes the key index and
    /// the commit sequence durable, then moves the checkpoint to the log's end. The caller
    /// holds the store lock exclusively, and every undo log that is pending is a redo marker.
    ///
    /// Each slot gets its last record's bytes (log order is each slot's order of writes),
    /// and only where they differ: a slot rewritten through its records one by one would show
    /// an optimistic reader (which takes no lock) an older value for a moment, with no log
    /// pending to warn it. Where a slot must change, a log is pending meanwhile (the marker of
    /// the commit that died, or this process's own).
    ///
    /// After a reboot the tail may be stale (a power failure keeps any subset of the writes
    /// not yet flushed, and the tail is never flushed on its own), so the whole ring from the
    /// checkpoint on is scanned. After a reset without one (every process gone, the page
    /// cache intact) the tail holds, and only the words of processes that died are cleared.
    /// The first settle after a reset records the pool's reset count (`epoch`), durable after
    /// the count itself, so that the next reboot's reset always counts past it.
    func settleRedoLog(_ store: StateStore) throws(PMLLError) {
        let view = store.view
        guard let h = try redoHeader(view) else { return }
        let resets = pmll_load64(&memory.header.pointee.volatile_resets)
        let epoch = h.pointee.epoch
        let whole = epoch != resets && (memory.header.pointee.last_reset_reason == PMLL_RESET_REBOOT || epoch &+ 1 != resets)
        let checkpoint = h.pointee.checkpoint, tail = pmll_load64_acquire(&h.pointee.tail), capacity = h.pointee.capacity
        let markers = pendingRedoMarkers(store)
        guard whole || tail != checkpoint || !markers.isEmpty else {
            if epoch != resets {
                clearRedoWords(h)
                try persistVolatileResets()
                h.pointee.epoch = resets
                try memory.persistence.persist(UnsafeRawPointer(h), 64, site: "redo.checkpoint")
            }
            return
        }
        let scanWhole = whole || tail < checkpoint || tail - checkpoint > capacity
        let (changes, records, newest, end) = try redoChanges(h, view: view, upTo: scanWhole ? checkpoint + capacity : tail)
        var own: UnsafeMutablePointer<pmll_log_header_t>?
        if !changes.isEmpty && markers.isEmpty { own = markRedoUnderWay(store, recordComplete: true) }
        for (offset, bytes) in changes { (memory.base + offset).copyMemory(from: bytes, byteCount: view.slotWidth) }
        CrashPoint.hit("redo.redone")
        // Each finished commit counts as committed; a settle of its own (after a power
        // failure) too, so that the store's rollback count stays what it was.
        for log in markers + (own.map { [$0] } ?? []) {
            pmll_add64(&log.pointee.commits, 1)
            pmll_store64_release(&log.pointee.done_seq, log.pointee.seq)
        }
        advanceCommitSequence(store, to: newest)
        // The key index and every log header, in one barrier (one msync of their span, which
        // writes only its dirty pages).
        let headers = (0..<store.layout.logSlots).map { (offset: store.offset(of: store.logHeader($0)), length: MemoryLayout<pmll_log_header_t>.size) }
        try persist([(view.index.lowerBound, view.index.count)] + headers, site: "redo.checkpoint")
        CrashPoint.hit("redo.index-durable")
        let settled = scanWhole ? end : tail
        clearRedoWords(h)
        pmll_store64_release(&h.pointee.tail, settled)
        h.pointee.checkpoint = settled
        if epoch != resets { try persistVolatileResets() }
        h.pointee.epoch = resets
        try memory.persistence.persist(UnsafeRawPointer(h), MemoryLayout<pmll_redo_header_t>.size, site: "redo.checkpoint")
        CrashPoint.hit("redo.settled")
        if !changes.isEmpty {
            Self.logger.notice("finished commits from the redo log", metadata: ["path": "\(path)", "records": "\(records)", "slots put in place": "\(changes.count)"])
            audit(.commit, .ok, "redo log settled: \(changes.count) slot(s) of \(records) record(s) put in place, \(markers.count) interrupted commit(s) finished")
        }
    }

    /// What settling the log up to `limit` puts in place: each slot's bytes in its last record
    /// (log order is each slot's order of writes), where they differ from the slot's now; how
    /// many records there were, the newest version among them, and where the last one ended.
    func redoChanges(_ h: UnsafeMutablePointer<pmll_redo_header_t>, view: StoreView, upTo limit: UInt64) throws(PMLLError)
        -> (changes: [Int: UnsafeRawPointer], records: Int, newest: UInt64, end: UInt64) {
        var records = 0, newest: UInt64 = 0
        var last: [Int: UnsafeRawPointer] = [:]
        let end = try scanRedo(h, upTo: limit) { (r, position) throws(PMLLError) in
            try collectSlots(r, at: position, view: view, into: &last)
            records += 1
            newest = max(newest, r.pointee.version)
            return true
        }
        let width = view.slotWidth
        return (last.filter { memcmp(memory.base + $0.key, $0.value, width) != 0 }, records, newest, end)
    }

    /// Makes the store's commit sequence at least `newest`, the newest version a settle put in
    /// place. No version below the sequence: the counts behind it are volatile between
    /// checkpoints, and a version given twice could hide a change from a serializable read.
    func advanceCommitSequence(_ store: StateStore, to newest: UInt64) {
        let sequence = store.commitSequence
        if newest > sequence, let log = (0..<store.layout.logSlots).map({ store.logHeader($0) }).first(where: { !isPending($0) }) {
            pmll_add64(&log.pointee.done_seq, newest - sequence)
        }
    }

    /// Visits each valid record from the checkpoint to `limit` in log order, until `visit`
    /// returns false; returns the end of the last one visited (the checkpoint if none). Where
    /// no valid record lies (a reservation whose writer died, a write a power failure lost,
    /// the skipped end of a lap) the scan steps on by the records' alignment.
    private func scanRedo(_ h: UnsafeMutablePointer<pmll_redo_header_t>, upTo limit: UInt64,
                          _ visit: (UnsafeMutablePointer<pmll_redo_record_t>, UInt64) throws(PMLLError) -> Bool) throws(PMLLError) -> UInt64 {
        let capacity = h.pointee.capacity, checkpoint = h.pointee.checkpoint
        let ring = UnsafeMutableRawPointer(h) + PoolLayout.page
        let head = UInt64(MemoryLayout<pmll_redo_record_t>.size)
        var position = checkpoint, end = checkpoint
        while position < limit {
            let at = position % capacity
            if at + head > capacity {
                position += capacity - at
                continue
            }
            if let r = validRedoRecord(ring + Int(at), position: position, room: Int(capacity - at)) {
                position += UInt64(r.pointee.bytes)
                end = position
                if try !visit(r, position - UInt64(r.pointee.bytes)) { break }
            } else {
                position += UInt64(PMLL_REDO_ALIGN)
            }
        }
        return end
    }

    /// For a read-only participant, which may not settle the log: whether a commit that
    /// returned may be only in its record and not in its slots. That is so when the machine
    /// restarted since the log was last settled whole (the slots' pages may never have reached
    /// the disk; a restart no read-write process has seen yet leaves the pool's boot id as it
    /// was) and a valid record lies above the checkpoint.
    func redoOwedSinceRestart(_ view: StoreView) throws(PMLLError) -> Bool {
        guard let h = try redoHeader(view) else { return false }
        let resets = pmll_load64(&memory.header.pointee.volatile_resets), epoch = h.pointee.epoch
        let settledSinceBoot = epoch == resets || (memory.header.pointee.last_reset_reason != PMLL_RESET_REBOOT && epoch &+ 1 == resets)
        guard !settledSinceBoot || VolatileState.bootChanged(memory.header, bootID: Self.bootID) else { return false }
        // Scanned once per reset count: the scan reads the whole ring.
        let service = services.required(.store, as: StoreService.self)
        if service.redoScannedClean.load(ordering: .relaxed) == resets &+ 1 { return false }
        var found = false
        _ = try scanRedo(h, upTo: h.pointee.checkpoint + h.pointee.capacity) { (_, _) throws(PMLLError) in
            found = true
            return false
        }
        if !found { service.redoScannedClean.store(resets &+ 1, ordering: .relaxed) }
        return found
    }

    /// This boot's id, read once (a file read each time).
    static let bootID = ProcessIdentity.bootID()

    /// The flush and reservation words, as no process uses them (the store lock is held
    /// exclusively: no commit is under way; a process that died in one left them set).
    private func clearRedoWords(_ h: UnsafeMutablePointer<pmll_redo_header_t>) {
        pmll_store64(&h.pointee.flush_requested, 0)
        pmll_store64(&h.pointee.flush_started, 0)
        pmll_store64(&h.pointee.flush_completed, 0)
        pmll_store32(&h.pointee.flushing, 0)
        pmll_store32(&h.pointee.writing, 0)
        pmll_store32(&h.pointee.group, 0)
        pmll_store32(&h.pointee.gather_word, 0)
        pmll_store64(&h.pointee.flush_nanoseconds, 0)
        pmll_store32(&h.pointee.checkpoint_claimed, 0)
    }

    /// Claims the checkpoint a commit found due (the log more than half full), so that one
    /// process of those that find it due takes the store lock for it.
    func claimRedoCheckpoint(_ view: StoreView) -> Bool {
        guard let h = try? redoHeader(view) else { return false }
        let used = pmll_load64_acquire(&h.pointee.tail) &- h.pointee.checkpoint
        guard used > h.pointee.capacity / 2 else { return false }
        var free: UInt32 = 0
        return pmll_cas32(&h.pointee.checkpoint_claimed, &free, 1) != 0
    }

    /// A record lying at `position`: its magic, its own position and its checksum match.
    private func validRedoRecord(_ raw: UnsafeMutableRawPointer, position: UInt64, room: Int) -> UnsafeMutablePointer<pmll_redo_record_t>? {
        let r = raw.assumingMemoryBound(to: pmll_redo_record_t.self)
        guard r.pointee.magic == PMLL_REDO_RECORD_MAGIC, r.pointee.position == position else { return nil }
        let bytes = Int(r.pointee.bytes)
        guard bytes >= MemoryLayout<pmll_redo_record_t>.size, bytes <= room, bytes % Int(PMLL_REDO_ALIGN) == 0,
              Self.redoRecordChecksum(raw, bytes: bytes) == r.pointee.checksum else { return nil }
        return r
    }

    /// Notes where each of a record's slots goes and its bytes (a later record's replace an
    /// earlier one's).
    private func collectSlots(_ r: UnsafeMutablePointer<pmll_redo_record_t>, at position: UInt64, view: StoreView,
                              into last: inout [Int: UnsafeRawPointer]) throws(PMLLError) {
        let raw = UnsafeRawPointer(r), bytes = Int(r.pointee.bytes)
        let entry = MemoryLayout<pmll_log_entry_t>.size
        var cursor = MemoryLayout<pmll_redo_record_t>.size
        for _ in 0..<r.pointee.count {
            guard cursor + entry <= bytes else { throw .transactionRecoveryFailed(reason: "redo record at \(position) is shorter than its entries") }
            let e = raw.loadUnaligned(fromByteOffset: cursor, as: pmll_log_entry_t.self)
            let offset = Int(clamping: e.offset), length = Int(e.length)
            guard e.kind == PMLL_LOG_BYTES, length == view.slotWidth, view.index.contains(offset),
                  (offset - view.index.lowerBound) % view.slotWidth == 0, cursor + entry + length <= bytes else {
                throw .transactionRecoveryFailed(reason: "redo record at \(position) names bytes that are not a key slot")
            }
            last[offset] = raw + cursor + entry
            cursor += entry + length
        }
    }

    /// The pool's count of volatile resets, durable: a redo log settled whole records it, and
    /// the next reset must count past it even after a power failure.
    private func persistVolatileResets() throws(PMLLError) {
        let field = UnsafeRawPointer(memory.header) + MemoryLayout<pmll_header_t>.offset(of: \pmll_header_t.volatile_resets)!
        try memory.persistence.persist(field, 8, site: "redo.checkpoint")
    }
}
