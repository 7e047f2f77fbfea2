public import CPMLL
import Synchronization

/// The extensions of a table that grows: the lock table and the queue table (Docs/PoolFormat.md
/// "Table growth"). Each is an area the state store's growth directory names (kind LOCKS or
/// QUEUES): one header page, then the elements. Extension k of a table created with C
/// elements holds elements [C·2^k, C·2^(k+1)), so an index names its extension by arithmetic
/// and an element never moves (waiters sleep on a lock word's address; ledgers, queue heads
/// and engines hold indexes).
///
/// Each process learns the extensions lazily: a lookup that misses, a creation, or an index
/// beyond what it knows (a ledger word, a queue's submit lock) reads the directory without a
/// lock and takes an area only once its header is intact, which the grower writes after the
/// growth committed: an area of a growth that is later rolled back is never taken.
@usableFromInline
package final class TableExtents: @unchecked Sendable {
    /// PMLL_AREA_LOCKS or PMLL_AREA_QUEUES.
    package let kind: UInt32
    package let magic: UInt64
    /// Elements of the table made at creation (C).
    package let created: UInt32
    /// The highest total this table can reach: C·2^n up to its limit (C if it cannot grow).
    package let maximum: UInt32
    /// Offset of each extension's area (its header page), 0 while unknown to this process.
    private let offsets: UnsafeMutablePointer<UInt64>
    private let base: UnsafeMutableRawPointer
    private let heapStart: Int
    private let mapping: PoolMapping
    /// A writable participant's barriers (nil: a read-only attach, which never writes).
    private let persistence: Persistence?
    private let learning = Mutex<Void>(())
    /// Where an index that names no known extension lands: zeros of this process's own (an
    /// EMPTY lock entry or queue head; a damaged ledger word must not crash the reader).
    private let nowhere: UnsafeMutableRawPointer
    static let nowhereBytes = 2048

    package init(kind: UInt32, created: Int, limit: UInt32, base: UnsafeMutableRawPointer, heap: Range<Int>, mapping: PoolMapping,
                 persistence: Persistence?) {
        self.kind = kind
        self.persistence = persistence
        magic = kind == PMLL_AREA_LOCKS ? PMLL_LOCK_AREA_MAGIC : PMLL_QUEUE_AREA_MAGIC
        self.created = UInt32(created)
        self.base = base
        self.heapStart = heap.lowerBound
        self.mapping = mapping
        offsets = .allocate(capacity: Int(PMLL_EXTENSIONS_MAX))
        offsets.initialize(repeating: 0, count: Int(PMLL_EXTENSIONS_MAX))
        // A pool without a state store has no growth directory: its tables never grow.
        var top = UInt64(created)
        while created > 0 && heap.count >= PoolLayout.page && top * 2 <= UInt64(limit) { top *= 2 }
        maximum = UInt32(top)
        nowhere = .allocate(byteCount: Self.nowhereBytes, alignment: 64)
        nowhere.initializeMemory(as: UInt8.self, repeating: 0, count: Self.nowhereBytes)
    }

    deinit {
        offsets.deallocate()
        nowhere.deallocate()
    }

    /// Extensions this table may have.
    package var extensionLimit: Int {
        guard created > 0 else { return 0 }
        var k = 0
        while (UInt64(created) << k) < UInt64(maximum) { k += 1 }
        return k
    }

    /// Elements of extension k.
    package func count(_ k: Int) -> UInt32 { created << UInt32(k) }

    /// The extension holding `index` (≥ C), the index's place in it and the extension's
    /// elements (its area starts after the header page); nil if this process cannot learn it.
    @inline(__always)
    package func element(_ index: UInt32) -> (area: UnsafeMutableRawPointer, slot: UInt32, count: UInt32)? {
        guard index < maximum else { return nil }
        let q = index / created
        let k = UInt32.bitWidth - 1 - q.leadingZeroBitCount
        var offset = pmll_load64_acquire(offsets + k)
        if offset == 0 {
            learn()
            offset = pmll_load64_acquire(offsets + k)
            if offset == 0 { return nil }
        }
        return (base + Int(offset) + PoolLayout.page, index - (created << UInt32(k)), created << UInt32(k))
    }

    /// Zeros for an index that names no known element.
    package func zeros<T>(as type: T.Type) -> UnsafeMutablePointer<T> {
        nowhere.initializeMemory(as: UInt8.self, repeating: 0, count: Self.nowhereBytes)
        return nowhere.assumingMemoryBound(to: T.self)
    }

    /// Whether extension k is known to this process.
    package func knows(_ k: Int) -> Bool { pmll_load64_acquire(offsets + k) != 0 }

    /// Elements of the tables this process knows: C, then C·2^(k+1) for each known extension
    /// k in order (extensions are made in order).
    package var known: UInt32 {
        var total = created
        for k in 0..<extensionLimit {
            guard knows(k) else { break }
            total = created << UInt32(k + 1)
        }
        return total
    }

    /// The area of extension k (after its header page), nil while unknown.
    package func table(_ k: Int) -> (area: UnsafeMutableRawPointer, first: UInt32, count: UInt32)? {
        let offset = pmll_load64_acquire(offsets + k)
        guard offset != 0 else { return nil }
        return (base + Int(offset) + PoolLayout.page, count(k), count(k))
    }

    /// Reads the growth directory and takes every extension of this table whose header is
    /// intact. Returns how many extensions are known afterwards (in order from 0).
    @discardableResult
    package func learn() -> Int {
        let limit = extensionLimit
        guard limit > 0 else { return 0 }
        return learning.withLock { _ in
            if let areas = GrowthDirectory.snapshot(base, heapStart: heapStart) {
                for area in areas where area.kind == kind {
                    let k = Int(area.first_block)
                    guard k < limit, !knows(k), area.size > UInt64(PoolLayout.page),
                          (try? mapping.ensureMapped(upTo: Int(area.offset + area.size))) != nil,
                          Self.intact(base + Int(area.offset), magic: magic, k: k, created: created) else { continue }
                    // The grower stores the magic before its barrier: a process that uses the
                    // area makes the header durable first, so that nothing it writes there can
                    // outlive the header in a power failure (and be unreachable after it).
                    if let persistence {
                        guard (try? persistence.persist(UnsafeRawPointer(base + Int(area.offset)), MemoryLayout<pmll_table_area_t>.size,
                                                        site: "table.area")) != nil else { continue }
                    }
                    pmll_store64_release(offsets + k, area.offset)
                }
            }
            var run = 0
            while run < limit && knows(run) { run += 1 }
            return run
        }
    }

    /// Whether an area's header says it is extension k of this kind of table, committed.
    package static func intact(_ area: UnsafeMutableRawPointer, magic: UInt64, k: Int, created: UInt32) -> Bool {
        let h = area.assumingMemoryBound(to: pmll_table_area_t.self)
        guard pmll_load64_acquire(&h.pointee.magic) == magic else { return false }
        return h.pointee.ordinal == UInt32(k) && h.pointee.first == created << UInt32(k) && h.pointee.count == created << UInt32(k)
            && h.pointee.checksum == checksum(h)
    }

    package static func checksum(_ h: UnsafeMutablePointer<pmll_table_area_t>) -> UInt32 {
        pmll_crc32c(0, h, MemoryLayout<pmll_table_area_t>.offset(of: \pmll_table_area_t.checksum)!)
    }

    /// Bytes of extension k of a table of `kind` after its header page.
    package static func tableBytes(kind: UInt32, count: UInt32, queueRing: Int) -> Int {
        kind == PMLL_AREA_LOCKS ? Int(count) * MemoryLayout<pmll_lock_entry_t>.size
            : Int(count) * (MemoryLayout<pmll_queue_head_t>.size + queueRing * MemoryLayout<pmll_record_t>.size)
    }
}

extension TableExtents {
    /// The lock entry of an index past the created table.
    @usableFromInline @inline(never)
    package func lockEntry(_ index: UInt32) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        guard let e = element(index) else { return zeros(as: pmll_lock_entry_t.self) }
        return e.area.assumingMemoryBound(to: pmll_lock_entry_t.self) + Int(e.slot)
    }

    /// The head of a queue past the created table.
    package func queueHead(_ index: UInt32) -> UnsafeMutablePointer<pmll_queue_head_t> {
        guard let e = element(index) else { return zeros(as: pmll_queue_head_t.self) }
        return e.area.assumingMemoryBound(to: pmll_queue_head_t.self) + Int(e.slot)
    }

    /// Record slot of `ticket` in the ring of a queue past the created table.
    package func queueRecord(_ index: UInt32, ticket: UInt64, ring: Int) -> UnsafeMutablePointer<pmll_record_t> {
        guard let e = element(index) else { return zeros(as: pmll_record_t.self) }
        let rings = e.area + Int(e.count) * MemoryLayout<pmll_queue_head_t>.size
        return (rings + Int(e.slot) * ring * MemoryLayout<pmll_record_t>.size).assumingMemoryBound(to: pmll_record_t.self)
            + Int(ticket % UInt64(ring))
    }
}
