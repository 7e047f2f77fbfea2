public import CPMLL

/// Typed views of the mapped pool file. The mapping is shared by every process; all
/// cross-process access to its volatile words goes through the atomics in cpmll.h.
/// (Inlinable accessors: the lock fast path reaches an entry from another module.)
@usableFromInline
package struct PoolMemory: @unchecked Sendable {
    @usableFromInline package let base: UnsafeMutableRawPointer
    /// The mapping, which grows in place with the file.
    package let mapping: PoolMapping
    /// Bytes mapped now.
    package var length: Int { mapping.length }
    @usableFromInline package let layout: PoolLayout
    package let persistence: Persistence
    /// The lock table's extensions (past the `layout.lockCapacity` entries made at creation).
    @usableFromInline package let lockExtents: TableExtents
    /// The queue table's extensions (past the `layout.queueCapacity` queues made at creation).
    package let queueExtents: TableExtents

    @inlinable
    package var header: UnsafeMutablePointer<pmll_header_t> { base.assumingMemoryBound(to: pmll_header_t.self) }

    /// Starts reading `range` of the file (clamped to what is mapped) before a scan of it:
    /// faults of the pool's MADV_RANDOM mapping read one page each (pmll_prefetch).
    package func prefetch(_ range: Range<Int>) {
        let end = min(range.upperBound, length)
        guard range.lowerBound < end else { return }
        pmll_prefetch(base + range.lowerBound, UInt64(end - range.lowerBound))
    }

    @inlinable @inline(__always)
    package func slot(_ index: SlotIndex) -> UnsafeMutablePointer<pmll_process_slot_t> {
        (base + layout.processTable.lowerBound).assumingMemoryBound(to: pmll_process_slot_t.self) + Int(index.rawValue)
    }

    @inlinable @inline(__always)
    package func lock(_ index: LockIndex) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        guard _fastPath(Int(index.rawValue) < layout.lockCapacity) else { return lockExtents.lockEntry(index.rawValue) }
        return (base + layout.lockTable.lowerBound).assumingMemoryBound(to: pmll_lock_entry_t.self) + Int(index.rawValue)
    }

    @inline(__always)
    package func queue(_ index: UInt32) -> UnsafeMutablePointer<pmll_queue_head_t> {
        guard Int(index) < layout.queueCapacity else { return queueExtents.queueHead(index) }
        return (base + layout.queueTable.lowerBound).assumingMemoryBound(to: pmll_queue_head_t.self) + Int(index)
    }

    /// The record slot of `ticket` in queue `index`'s ring.
    @inline(__always)
    package func record(queue index: UInt32, ticket: UInt64) -> UnsafeMutablePointer<pmll_record_t> {
        guard Int(index) < layout.queueCapacity else { return queueExtents.queueRecord(index, ticket: ticket, ring: layout.queueRing) }
        return (base + layout.ringOffset(queue: Int(index))).assumingMemoryBound(to: pmll_record_t.self) + Int(ticket % UInt64(layout.queueRing))
    }

    package var processCapacity: UInt32 { UInt32(layout.processCapacity) }
    /// Queues of the table made at creation (extensions come after them).
    package var queueCapacity: UInt32 { UInt32(layout.queueCapacity) }
    /// Every queue index of the table and of its extensions (the directory read again first).
    package var queueIndexes: Range<UInt32> {
        queueExtents.learn()
        return 0..<queueExtents.known
    }
    /// Entries of the lock table made at creation (extensions come after them).
    package var lockCapacity: UInt32 { UInt32(layout.lockCapacity) }
    /// Every slot of the process table, in order.
    package var slots: [SlotIndex] { (0..<processCapacity).map(SlotIndex.init) }
    /// Every entry of the lock table and of its extensions, in order (the directory is read
    /// again first, so entries other processes made in a new extension are included).
    package var locks: [LockIndex] {
        lockExtents.learn()
        return (0..<lockExtents.known).map(LockIndex.init)
    }
}

/// A participant's identity in lock words, records and journals: generation << 10 | slot.
/// Never a bare PID: a slot's generation changes with each registration, so a token names one
/// attachment of one process.
@usableFromInline
package struct OwnerToken: Hashable, Sendable, CustomStringConvertible {
    @usableFromInline package let rawValue: UInt32

    /// A token as stored in the pool (a word's owner bits, a record's or journal's owner field).
    @inline(__always) package init(rawValue: UInt32) { self.rawValue = rawValue }
    @inline(__always) package init(slot: SlotIndex, generation: UInt32) { rawValue = generation << PMLL_SLOT_BITS | slot.rawValue }

    /// The owner of a lock word, or nil when the word is free.
    @inline(__always) package static func owner(ofWord word: UInt32) -> OwnerToken? {
        let bits = word & PMLL_OWNER_MASK
        return bits == 0 ? nil : OwnerToken(rawValue: bits)
    }

    @inline(__always) package var slot: SlotIndex { SlotIndex(rawValue & (PMLL_MAX_PROCESSES - 1)) }
    @inline(__always) package var generation: UInt32 { (rawValue & PMLL_OWNER_MASK) >> PMLL_SLOT_BITS }
    @usableFromInline package var description: String { "token \(generation):\(slot.rawValue)" }
}

/// The index of a slot in the process table.
@usableFromInline
package struct SlotIndex: Hashable, Comparable, Sendable {
    @usableFromInline package let rawValue: UInt32
    @inlinable @inline(__always) package init(_ rawValue: UInt32) { self.rawValue = rawValue }
    @usableFromInline package static func < (a: SlotIndex, b: SlotIndex) -> Bool { a.rawValue < b.rawValue }
}

/// The index of an entry in the lock table (usable from inlinable code: a ``LockHandle``
/// carries one into its callers' specialised `withLock`).
@usableFromInline
package struct LockIndex: Hashable, Comparable, Sendable {
    @usableFromInline package let rawValue: UInt32
    @inlinable @inline(__always) package init(_ rawValue: UInt32) { self.rawValue = rawValue }
    @usableFromInline package static func < (a: LockIndex, b: LockIndex) -> Bool { a.rawValue < b.rawValue }
}

extension String {
    /// Reads a NUL-padded fixed C array (comm, name fields).
    package init<T>(fixedCString tuple: T) {
        self = withUnsafeBytes(of: tuple) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

/// Copies up to `capacity - 1` bytes of `text` into a fixed C array and NUL-pads it.
package func writeFixedCString<T>(_ text: String, into tuple: inout T) {
    withUnsafeMutableBytes(of: &tuple) { raw in
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        for (i, byte) in text.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
    }
}
