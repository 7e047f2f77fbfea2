public import CPMLL
import Synchronization

/// The lock table's extensions (Docs/PoolFormat.md "Lock table growth"): areas the state
/// store's growth directory names with kind LOCKS. Extension k of a pool created with C
/// entries holds entries [C·2^k, C·2^(k+1)), so an index names its extension by arithmetic
/// and a lock entry never moves (waiters sleep on its word's address).
///
/// Each process learns the extensions lazily: a lookup that misses, a creation, or an index
/// from another process (a ledger word, a queue's submit lock) beyond what it knows reads the
/// directory without a lock and takes an area only once its header is intact, which the
/// grower writes after the growth committed: an area of a growth that is later rolled back
/// is never taken.
@usableFromInline
package final class LockExtents: @unchecked Sendable {
    /// Entries of the table made at creation (C).
    package let created: UInt32
    /// Offset of each extension's area (its header page), 0 while unknown to this process.
    private let offsets: UnsafeMutablePointer<UInt64>
    /// The highest total this pool can reach: C·2^n up to PMLL_LOCK_ENTRIES_MAX (or C).
    package let maximum: UInt32
    private let base: UnsafeMutableRawPointer
    private let heapStart: Int
    private let mapping: PoolMapping
    private let learning = Mutex<Void>(())
    /// Where an index that names no known extension lands: an EMPTY entry of this process's
    /// own (a damaged ledger word must not crash the reader).
    private let nowhere: UnsafeMutablePointer<pmll_lock_entry_t>

    package init(created: Int, base: UnsafeMutableRawPointer, heap: Range<Int>, mapping: PoolMapping) {
        self.created = UInt32(created)
        self.base = base
        self.heapStart = heap.lowerBound
        self.mapping = mapping
        offsets = .allocate(capacity: Int(PMLL_LOCK_EXTENSIONS_MAX))
        offsets.initialize(repeating: 0, count: Int(PMLL_LOCK_EXTENSIONS_MAX))
        // A pool without a state store has no growth directory: its table never grows.
        var top = UInt64(created)
        while heap.count >= PoolLayout.page && top * 2 <= UInt64(PMLL_LOCK_ENTRIES_MAX) { top *= 2 }
        maximum = UInt32(top)
        nowhere = .allocate(capacity: 1)
        UnsafeMutableRawPointer(nowhere).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<pmll_lock_entry_t>.size)
    }

    deinit {
        offsets.deallocate()
        nowhere.deallocate()
    }

    /// Extensions a pool created with `created` entries may have.
    package var extensionLimit: Int {
        var k = 0
        while (UInt64(created) << k) < UInt64(maximum) { k += 1 }
        return k
    }

    /// The extension holding `index` (≥ C) and the entry's place in it.
    @inline(__always)
    static func place(_ index: UInt32, created: UInt32) -> (k: Int, slot: UInt32) {
        let q = index / created
        let k = UInt32.bitWidth - 1 - q.leadingZeroBitCount
        return (k, index - (created << k))
    }

    /// The entry of an index past the created table. Learns the extension if needed.
    @usableFromInline @inline(never)
    package func entry(_ index: UInt32) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        guard index < maximum else { return cleared(nowhere) }
        let (k, slot) = Self.place(index, created: created)
        var offset = pmll_load64_acquire(offsets + k)
        if offset == 0 {
            learn()
            offset = pmll_load64_acquire(offsets + k)
            if offset == 0 { return cleared(nowhere) }
        }
        return (base + Int(offset) + PoolLayout.page).assumingMemoryBound(to: pmll_lock_entry_t.self) + Int(slot)
    }

    private func cleared(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        UnsafeMutableRawPointer(entry).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<pmll_lock_entry_t>.size)
        return entry
    }

    /// Whether extension k is known to this process.
    package func knows(_ k: Int) -> Bool { pmll_load64_acquire(offsets + k) != 0 }

    /// Entries of the tables this process knows: C, then C·2^k for each known extension k in
    /// order (the first unknown one ends the run: extensions are made in order).
    package var known: UInt32 {
        var total = created
        for k in 0..<extensionLimit where knows(k) { total = created << (k + 1) }
        return total
    }

    /// Reads the growth directory and takes every extension whose header is intact.
    /// Returns the number of extensions known afterwards (in order from 0).
    @discardableResult
    package func learn() -> Int {
        learning.withLock { _ in
            if let areas = GrowthDirectory.snapshot(base, heapStart: heapStart) {
                for area in areas where area.kind == PMLL_AREA_LOCKS {
                    let k = Int(area.first_block)
                    guard k < extensionLimit, !knows(k), area.size >= UInt64(PoolLayout.page) + (UInt64(created) << k) * 512,
                          (try? mapping.ensureMapped(upTo: Int(area.offset + area.size))) != nil,
                          Self.intact(base + Int(area.offset), k: k, created: created) else { continue }
                    pmll_store64_release(offsets + k, area.offset)
                }
            }
            var run = 0
            while run < extensionLimit && knows(run) { run += 1 }
            return run
        }
    }

    /// Whether an area's header says it is extension k, committed.
    package static func intact(_ area: UnsafeMutableRawPointer, k: Int, created: UInt32) -> Bool {
        let h = area.assumingMemoryBound(to: pmll_lock_area_t.self)
        guard pmll_load64_acquire(&h.pointee.magic) == PMLL_LOCK_AREA_MAGIC else { return false }
        return h.pointee.ordinal == UInt32(k) && h.pointee.first == created << k && h.pointee.entries == created << k
            && h.pointee.checksum == checksum(h)
    }

    package static func checksum(_ h: UnsafeMutablePointer<pmll_lock_area_t>) -> UInt32 {
        pmll_crc32c(0, h, MemoryLayout<pmll_lock_area_t>.offset(of: \pmll_lock_area_t.checksum)!)
    }

    /// The table of extension k (nil while unknown): its first entry and its entry count.
    package func table(_ k: Int) -> (entries: UnsafeMutablePointer<pmll_lock_entry_t>, first: UInt32, count: UInt32)? {
        let offset = pmll_load64_acquire(offsets + k)
        guard offset != 0 else { return nil }
        return ((base + Int(offset) + PoolLayout.page).assumingMemoryBound(to: pmll_lock_entry_t.self), created << k, created << k)
    }
}
