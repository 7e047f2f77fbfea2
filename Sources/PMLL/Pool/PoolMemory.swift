import CPMLL

/// Typed views of the mapped pool file. The mapping is shared by every process; all
/// cross-process access to its volatile words goes through the atomics in cpmll.h.
struct PoolMemory: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let length: Int
    let layout: PoolLayout
    let persistence: Persistence

    var header: UnsafeMutablePointer<pmll_header_t> { base.assumingMemoryBound(to: pmll_header_t.self) }

    @inline(__always)
    func slot(_ index: UInt32) -> UnsafeMutablePointer<pmll_process_slot_t> {
        (base + layout.processTable.lowerBound).assumingMemoryBound(to: pmll_process_slot_t.self) + Int(index)
    }

    @inline(__always)
    func lock(_ index: UInt32) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        (base + layout.lockTable.lowerBound).assumingMemoryBound(to: pmll_lock_entry_t.self) + Int(index)
    }

    @inline(__always)
    func queue(_ index: UInt32) -> UnsafeMutablePointer<pmll_queue_head_t> {
        (base + layout.queueTable.lowerBound).assumingMemoryBound(to: pmll_queue_head_t.self) + Int(index)
    }

    /// The record slot of `ticket` in queue `index`'s ring.
    @inline(__always)
    func record(queue index: UInt32, ticket: UInt64) -> UnsafeMutablePointer<pmll_record_t> {
        (base + layout.ringOffset(queue: Int(index))).assumingMemoryBound(to: pmll_record_t.self) + Int(ticket % UInt64(layout.queueRing))
    }

    var processCapacity: UInt32 { UInt32(layout.processCapacity) }
    var queueCapacity: UInt32 { UInt32(layout.queueCapacity) }
    var lockCapacity: UInt32 { UInt32(layout.lockCapacity) }
}

/// Owner tokens: generation << 10 | slot. Never a bare PID.
enum OwnerToken {
    @inline(__always) static func slot(_ token: UInt32) -> UInt32 { token & (PMLL_MAX_PROCESSES - 1) }
    @inline(__always) static func generation(_ token: UInt32) -> UInt32 { (token & PMLL_OWNER_MASK) >> PMLL_SLOT_BITS }
    @inline(__always) static func make(slot: UInt32, generation: UInt32) -> UInt32 { generation << PMLL_SLOT_BITS | slot }
}

extension String {
    /// Reads a NUL-padded fixed C array (comm, name fields).
    init<T>(fixedCString tuple: T) {
        self = withUnsafeBytes(of: tuple) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

/// Copies up to `capacity - 1` bytes of `text` into a fixed C array and NUL-pads it.
func writeFixedCString<T>(_ text: String, into tuple: inout T) {
    withUnsafeMutableBytes(of: &tuple) { raw in
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        for (i, byte) in text.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
    }
}
