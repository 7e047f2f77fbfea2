package import CPMLL

/// Typed views of the mapped pool file. The mapping is shared by every process; all
/// cross-process access to its volatile words goes through the atomics in cpmll.h.
package struct PoolMemory: @unchecked Sendable {
    package let base: UnsafeMutableRawPointer
    package let length: Int
    package let layout: PoolLayout
    package let persistence: Persistence

    package var header: UnsafeMutablePointer<pmll_header_t> { base.assumingMemoryBound(to: pmll_header_t.self) }

    @inline(__always)
    package func slot(_ index: UInt32) -> UnsafeMutablePointer<pmll_process_slot_t> {
        (base + layout.processTable.lowerBound).assumingMemoryBound(to: pmll_process_slot_t.self) + Int(index)
    }

    @inline(__always)
    package func lock(_ index: UInt32) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        (base + layout.lockTable.lowerBound).assumingMemoryBound(to: pmll_lock_entry_t.self) + Int(index)
    }

    @inline(__always)
    package func queue(_ index: UInt32) -> UnsafeMutablePointer<pmll_queue_head_t> {
        (base + layout.queueTable.lowerBound).assumingMemoryBound(to: pmll_queue_head_t.self) + Int(index)
    }

    /// The record slot of `ticket` in queue `index`'s ring.
    @inline(__always)
    package func record(queue index: UInt32, ticket: UInt64) -> UnsafeMutablePointer<pmll_record_t> {
        (base + layout.ringOffset(queue: Int(index))).assumingMemoryBound(to: pmll_record_t.self) + Int(ticket % UInt64(layout.queueRing))
    }

    package var processCapacity: UInt32 { UInt32(layout.processCapacity) }
    package var queueCapacity: UInt32 { UInt32(layout.queueCapacity) }
    package var lockCapacity: UInt32 { UInt32(layout.lockCapacity) }
}

/// Owner tokens: generation << 10 | slot. Never a bare PID.
package enum OwnerToken {
    @inline(__always) package static func slot(_ token: UInt32) -> UInt32 { token & (PMLL_MAX_PROCESSES - 1) }
    @inline(__always) package static func generation(_ token: UInt32) -> UInt32 { (token & PMLL_OWNER_MASK) >> PMLL_SLOT_BITS }
    @inline(__always) package static func make(slot: UInt32, generation: UInt32) -> UInt32 { generation << PMLL_SLOT_BITS | slot }
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
