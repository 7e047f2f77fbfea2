import CPMLL
import PMLLCore

/// A read-only participant's own copy of the few pages a settle of the redo log would change.
///
/// After a restart, until a read-write process opens the pool and settles the log, a commit
/// that returned may be only in its redo record (its writes in place lost with the page
/// cache). A read-only participant may not write the pool, but it may map those pages
/// copy-on-write and put the records' bytes there itself: its reads then see every
/// acknowledged commit, and the file stays as it was, byte for byte. The overlay stands for
/// the pool as no read-write process has touched it since the restart: once one has (it
/// stamps this boot's id in the header and counts a reset before it changes the store), the
/// pages are mapped shared again and the reader reads what that process settled.
struct RedoOverlay {
    /// The pool's reset count when the overlay was laid.
    let resets: UInt64
    /// Page ranges mapped copy-on-write.
    let pages: [Range<Int>]
}

/// What a read-only read stands on.
enum ReadOnlyView: Equatable {
    /// The pool's pages as they are.
    case shared
    /// The redo overlay laid at this reset count.
    case overlay(resets: UInt64)
    /// A read-write process is putting the log in place right now: read again shortly.
    case settling
}

extension Pool {
    /// The view a read-only read stands on now: lays the redo overlay if a restart left
    /// commits only in the log and no read-write process has opened the pool since; takes it
    /// away once one has.
    func readOnlyView(_ store: StateStore) throws(PMLLError) -> ReadOnlyView {
        let service = services.required(.store, as: StoreService.self)
        return try service.redoOverlay.withLock { (overlay) throws(PMLLError) -> ReadOnlyView in
            if let laid = overlay {
                if overlayHolds(resets: laid.resets) { return .overlay(resets: laid.resets) }
                for range in laid.pages { try memory.mapping.remap(range, privately: false) }
                overlay = nil
            }
            guard try redoOwedSinceRestart(try store.refresh()) else { return .shared }
            // Owed although this boot's id is in the header: a read-write opener reset the
            // pool and is settling the log.
            guard VolatileState.bootChanged(memory.header, bootID: Self.bootID) else { return .settling }
            let resets = pmll_load64_acquire(&memory.header.pointee.volatile_resets)
            let laid = try layRedoOverlay(store, resets: resets)
            overlay = laid
            return .overlay(resets: resets)
        }
    }

    /// Whether an overlay laid at reset count `resets` still stands for the pool: no
    /// read-write process has opened it since (each stamps the boot id, then counts a reset,
    /// before it changes the store).
    func overlayHolds(resets: UInt64) -> Bool {
        pmll_load64_acquire(&memory.header.pointee.volatile_resets) == resets
            && VolatileState.bootChanged(memory.header, bootID: Self.bootID)
    }

    /// Maps copy-on-write the pages of the key slots the log's records change and of the
    /// transaction logs' headers, and puts in them what a settle would put in place: each
    /// slot's bytes from its last record, the interrupted commits through the log finished,
    /// the commit sequence past the newest record.
    private func layRedoOverlay(_ store: StateStore, resets: UInt64) throws(PMLLError) -> RedoOverlay {
        let view = store.view
        guard let h = try redoHeader(view) else { return RedoOverlay(resets: resets, pages: []) }
        // The whole ring, as a settle after a reboot reads it: the tail may be stale.
        let (changes, records, newest, _) = try redoChanges(h, view: view, upTo: h.pointee.checkpoint + h.pointee.capacity)
        let headers = (0..<store.layout.logSlots).map { store.logHeader($0) }
        var spans = changes.keys.map { $0..<($0 + view.slotWidth) }
        spans += headers.map { store.offset(of: $0)..<(store.offset(of: $0) + MemoryLayout<pmll_log_header_t>.size) }
        let pages = Self.pageRanges(spans)
        var mapped: [Range<Int>] = []
        do throws(PMLLError) {
            for range in pages {
                try memory.mapping.remap(range, privately: true)
                mapped.append(range)
            }
        } catch {
            for range in mapped { try? memory.mapping.remap(range, privately: false) }
            throw error
        }
        for (offset, bytes) in changes { (memory.base + offset).copyMemory(from: bytes, byteCount: view.slotWidth) }
        for log in pendingRedoMarkers(store) { pmll_store64_release(&log.pointee.done_seq, log.pointee.seq) }
        advanceCommitSequence(store, to: newest)
        Self.logger.info("read-only view of commits still only in the redo log", metadata: ["path": "\(path)", "records": "\(records)", "slots": "\(changes.count)"])
        return RedoOverlay(resets: resets, pages: pages)
    }

    /// The pages that `spans` (byte ranges of the file) touch, adjacent ones merged.
    static func pageRanges(_ spans: [Range<Int>]) -> [Range<Int>] {
        let page = PoolLayout.page
        let sorted = spans.map { ($0.lowerBound / page * page)..<PoolLayout.roundUp($0.upperBound) }.sorted { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int>] = []
        for r in sorted {
            if let last = merged.last, r.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        return merged
    }
}
