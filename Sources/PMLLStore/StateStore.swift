package import CPMLL
package import PMLLCore
import PMLLLocks

/// The persistent key-value store in the pool's heap: an open-addressing index of 128-byte
/// key slots and an extent allocator over a block bitmap. Records up to 88 bytes of key and
/// value live inline in their slot; larger ones in an extent of blocks (key, then value).
/// Values are never overwritten in place: a new value gets new blocks, so only slots and
/// bitmap bytes change in place, and only they need undo entries (Docs/Transactions.md).
package final class StateStore: @unchecked Sendable {
    package let memory: PoolMemory
    package let layout: StoreLayout
    package let path: String

    // A class, not a struct: every transaction reaches the store several times through the
    // pool's services, and a reference costs one retain where a copy of the struct cost one
    // for each of its reference-counted fields.
    package init(memory: PoolMemory, layout: StoreLayout, path: String) {
        self.memory = memory
        self.layout = layout
        self.path = path
    }

    package static func validate(key: String, user: Bool = false) throws(PMLLError) {
        if user && key.hasPrefix("pmll:") { throw .invalidKey(key: key, reason: "keys starting with 'pmll:' are reserved for the library") }
        let bytes = key.utf8.count
        guard bytes > 0 else { throw .invalidKey(key: key, reason: "empty") }
        guard bytes <= Int(PMLL_KEY_MAX) else { throw .invalidKey(key: String(key.prefix(40)) + "…", reason: "\(bytes) bytes; the limit is \(PMLL_KEY_MAX)") }
        guard !key.utf8.contains(0) else { throw .invalidKey(key: key, reason: "contains NUL") }
    }

    package var capacity: UInt32 { UInt32(layout.keyCapacity) }
    package var blockCount: Int { layout.blockCount }

    package func slot(_ i: UInt32) -> UnsafeMutablePointer<pmll_key_slot_t> {
        (memory.base + layout.index.lowerBound).assumingMemoryBound(to: pmll_key_slot_t.self) + Int(i)
    }
    package var bitmap: UnsafeMutablePointer<UInt8> { (memory.base + layout.bitmap.lowerBound).assumingMemoryBound(to: UInt8.self) }
    package func block(_ b: UInt32) -> UnsafeMutableRawPointer { memory.base + layout.blocks.lowerBound + Int(b) * Int(PMLL_BLOCK_SIZE) }
    package func logHeader(_ i: Int) -> UnsafeMutablePointer<pmll_log_header_t> {
        (memory.base + layout.logs.lowerBound + i * Int(PMLL_LOG_SLOT_SIZE)).assumingMemoryBound(to: pmll_log_header_t.self)
    }
    package func offset(of pointer: UnsafeRawPointer) -> Int { pointer - UnsafeRawPointer(memory.base) }

    // MARK: lookup

    /// The slot holding `key`, and the first reusable slot on its probe chain.
    package func find(_ key: [UInt8]) throws(PMLLError) -> (found: UInt32?, free: UInt32?) {
        let hash = key.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }
        var free: UInt32?
        for probe in 0..<capacity {
            let i = (hash &+ probe) % capacity
            let s = slot(i)
            switch s.pointee.state {
            case PMLL_KEY_EMPTY: return (nil, free ?? i)
            case PMLL_KEY_TOMBSTONE: if free == nil { free = i }
            case PMLL_KEY_USED:
                if s.pointee.key_hash == hash && s.pointee.key_length == UInt32(key.count) && storedKeyEquals(i, key) { return (i, free) }
            default:
                throw .corruptPool(path: path, reason: "key slot \(i) has unknown state \(s.pointee.state)")
            }
        }
        return (nil, free)
    }

    /// The record bytes (key then value) of a used slot, checked against its checksum.
    package func record(_ i: UInt32) throws(PMLLError) -> [UInt8] {
        let s = slot(i)
        let length = Int(s.pointee.key_length) + Int(s.pointee.value_length)
        guard s.pointee.key_length <= PMLL_KEY_MAX, s.pointee.value_length <= PMLL_VALUE_MAX else {
            throw .corruptRecord(key: "#\(i)", reason: "impossible lengths")
        }
        var bytes: [UInt8]
        if s.pointee.block_count == 0 {
            guard length <= Int(PMLL_INLINE_MAX) else { throw .corruptRecord(key: "#\(i)", reason: "inline record too long") }
            bytes = withUnsafeBytes(of: s.pointee.inline_data) { Array($0.prefix(length)) }
        } else {
            let end = Int(s.pointee.first_block) + Int(s.pointee.block_count)
            guard end <= blockCount, Int(s.pointee.block_count) * Int(PMLL_BLOCK_SIZE) >= length else {
                throw .corruptRecord(key: "#\(i)", reason: "extent out of range")
            }
            bytes = Array(UnsafeRawBufferPointer(start: block(s.pointee.first_block), count: length))
        }
        guard Self.checksum(s, record: bytes) == s.pointee.checksum else {
            let name = String(decoding: bytes.prefix(Int(s.pointee.key_length)), as: UTF8.self)
            throw .corruptRecord(key: name, reason: "checksum mismatch")
        }
        return bytes
    }

    /// Compares in place; a damaged key simply does not match (reading its value reports it).
    private func storedKeyEquals(_ i: UInt32, _ key: [UInt8]) -> Bool {
        let s = slot(i)
        if s.pointee.block_count == 0 {
            guard key.count <= Int(PMLL_INLINE_MAX) else { return false }
            return withUnsafeBytes(of: s.pointee.inline_data) { $0.prefix(key.count).elementsEqual(key) }
        }
        guard Int(s.pointee.first_block) + Int(s.pointee.block_count) <= blockCount else { return false }
        return UnsafeRawBufferPointer(start: block(s.pointee.first_block), count: key.count).elementsEqual(key)
    }

    package func key(of i: UInt32) throws(PMLLError) -> [UInt8] {
        Array(try record(i).prefix(Int(slot(i).pointee.key_length)))
    }

    package static func checksum(_ s: UnsafeMutablePointer<pmll_key_slot_t>, record: [UInt8]) -> UInt32 {
        var fields = [s.pointee.key_hash, s.pointee.key_length, s.pointee.value_length, s.pointee.first_block, s.pointee.block_count]
        var crc = fields.withUnsafeMutableBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }
        crc = withUnsafeBytes(of: s.pointee.version) { pmll_crc32c(crc, $0.baseAddress, $0.count) }
        return record.withUnsafeBytes { pmll_crc32c(crc, $0.baseAddress, $0.count) }
    }

    // MARK: space

    package func isAllocated(_ b: Int) -> Bool { bitmap[b / 8] & (1 << (b % 8)) != 0 }

    package func usage() -> StoreUsage {
        let keys = Int(countUsedSlots())
        var blocks = 0
        for byte in 0..<((blockCount + 7) / 8) { blocks += bitmap[byte].nonzeroBitCount }
        return StoreUsage(keysUsed: keys, keyCapacity: Int(capacity), blocksUsed: blocks, blockCount: blockCount,
                     blockSize: Int(PMLL_BLOCK_SIZE), logSlots: layout.logSlots)
    }
}

/// Space in the state store, as `pmll status` shows it.
public struct StoreUsage: Codable, Sendable, Equatable {
    public let keysUsed: Int
    public let keyCapacity: Int
    public let blocksUsed: Int
    public let blockCount: Int
    public let blockSize: Int
    public let logSlots: Int
}
