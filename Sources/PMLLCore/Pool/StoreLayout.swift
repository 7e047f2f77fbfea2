package import CPMLL

/// Where the state store's tables live inside the pool's heap section:
/// superblock (one page), key index, undo-log slots, block bitmap, value blocks.
package struct StoreLayout: Equatable {
    package static let superSize = PoolLayout.page
    package static let minimumBlocks = 256

    package let keyCapacity: Int
    package let logSlots: Int
    /// `PMLL_STORE_VERSION` (256-byte key slots) or, in pools created before it,
    /// `PMLL_STORE_VERSION_NARROW` (128-byte slots): a store keeps its slot width for life.
    package let version: UInt32
    /// Bytes per key slot, and the most record bytes (key + value) a slot holds inline.
    package let slotWidth: Int
    package var inlineMax: Int { slotWidth - Int(PMLL_KEY_SLOT_HEAD) }
    package let index: Range<Int>
    package let logs: Range<Int>
    package let bitmap: Range<Int>
    package let blocks: Range<Int>
    package var blockCount: Int { blocks.count / Int(PMLL_BLOCK_SIZE) }

    /// `version` must be one this build knows (`pmll_key_slot_width` not 0).
    package init(heap: Range<Int>, keyCapacity: Int, logSlots: Int, version: UInt32 = PMLL_STORE_VERSION) {
        self.keyCapacity = keyCapacity
        self.logSlots = logSlots
        self.version = version
        self.slotWidth = Int(pmll_key_slot_width(version))
        let indexStart = heap.lowerBound + Self.superSize
        let indexEnd = indexStart + PoolLayout.roundUp(keyCapacity * slotWidth)
        let logsEnd = indexEnd + logSlots * Int(PMLL_LOG_SLOT_SIZE)
        index = indexStart..<indexEnd
        logs = indexEnd..<logsEnd
        // n blocks need n/8 bitmap bytes (a page at least) and n * 256 bytes.
        let room = max(0, heap.upperBound - logsEnd - PoolLayout.page)
        var count = room * 8 / (8 * Int(PMLL_BLOCK_SIZE) + 1)
        var bitmapBytes = PoolLayout.roundUp(max(1, (count + 7) / 8))
        while count > 0 && logsEnd + bitmapBytes + count * Int(PMLL_BLOCK_SIZE) > heap.upperBound {
            count -= 1
            bitmapBytes = PoolLayout.roundUp(max(1, (count + 7) / 8))
        }
        bitmap = logsEnd..<(logsEnd + bitmapBytes)
        blocks = bitmap.upperBound..<(bitmap.upperBound + count * Int(PMLL_BLOCK_SIZE))
    }

    /// Bytes a heap needs for these capacities and a minimal block area.
    package static func minimumHeap(keyCapacity: Int, logSlots: Int, version: UInt32 = PMLL_STORE_VERSION) -> Int {
        superSize + PoolLayout.roundUp(keyCapacity * Int(pmll_key_slot_width(version))) + logSlots * Int(PMLL_LOG_SLOT_SIZE)
            + PoolLayout.page + minimumBlocks * Int(PMLL_BLOCK_SIZE)
    }

    /// Writes the superblock of a new pool.
    package func format(_ base: UnsafeMutableRawPointer, heapStart: Int) {
        let s = (base + heapStart).assumingMemoryBound(to: pmll_store_super_t.self)
        withUnsafeMutableBytes(of: &s.pointee.magic) { $0.copyBytes(from: Array(PMLL_STORE_MAGIC.utf8)) }
        s.pointee.version = version
        s.pointee.key_capacity = UInt32(keyCapacity)
        s.pointee.block_count = UInt32(blockCount)
        s.pointee.log_slots = UInt32(logSlots)
        s.pointee.index_offset = UInt64(index.lowerBound)
        s.pointee.logs_offset = UInt64(logs.lowerBound)
        s.pointee.bitmap_offset = UInt64(bitmap.lowerBound)
        s.pointee.blocks_offset = UInt64(blocks.lowerBound)
        s.pointee.checksum = Self.checksum(s)
        // A census of an empty store, journals counted: a lone open of a pool nobody has
        // committed to yet trusts the count instead of reading every key slot for journals.
        (base + heapStart + Int(PMLL_CENSUS_OFFSET)).assumingMemoryBound(to: pmll_store_census_t.self).pointee =
            Self.census(liveKeys: 0, journals: 0)
    }

    /// The store census (right after the superblock, counted by PMLLStore's commits) for
    /// `liveKeys` and, when known, the journal count.
    package static func census(liveKeys: UInt64, journals: UInt64?) -> pmll_store_census_t {
        let flags = journals == nil ? 0 : PMLL_CENSUS_JOURNALS
        return pmll_store_census_t(magic: PMLL_CENSUS_MAGIC, live_keys: liveKeys,
                                   checksum: censusChecksum(magic: PMLL_CENSUS_MAGIC, liveKeys: liveKeys, flags: flags, journals: journals ?? 0),
                                   flags: flags, journal_keys: journals ?? 0)
    }

    package static func censusChecksum(magic: UInt64, liveKeys: UInt64, flags: UInt32 = 0, journals: UInt64 = 0) -> UInt32 {
        var fields = (magic, liveKeys)
        let crc = withUnsafeBytes(of: &fields) { pmll_crc32c(0, $0.baseAddress, $0.count) }
        // A census from before the journal count keeps its checksum (flags 0).
        guard flags != 0 else { return crc }
        var more = (flags, UInt32(0), journals)
        return withUnsafeBytes(of: &more) { pmll_crc32c(crc, $0.baseAddress, $0.count) }
    }

    package static func checksum(_ s: UnsafeMutablePointer<pmll_store_super_t>) -> UInt32 {
        pmll_crc32c(0, s, MemoryLayout<pmll_store_super_t>.offset(of: \pmll_store_super_t.checksum)!)
    }

    /// The header's signature names the store version its creator wrote (0: a build from
    /// before signatures, whose stores were all version 1); both are written at creation, so a
    /// disagreement is damage, and reading slots at the other width would misread every key.
    package static func checkVersion(_ version: UInt32, signature: UInt64, path: String) throws(PMLLError) {
        guard signature == 0 ? version == PMLL_STORE_VERSION_NARROW : signature == pmll_layout_signature_of_store(version) else {
            throw .corruptPool(path: path, reason: "state store version \(version) disagrees with the header's layout signature")
        }
    }

    /// Reads and checks the superblock of an existing pool.
    package static func read(_ base: UnsafeMutableRawPointer, heap: Range<Int>, path: String) throws(PMLLError) -> StoreLayout {
        let s = (base + heap.lowerBound).assumingMemoryBound(to: pmll_store_super_t.self)
        let magic = withUnsafeBytes(of: s.pointee.magic) { Array($0) == Array(PMLL_STORE_MAGIC.utf8) }
        let version = s.pointee.version
        guard magic, pmll_key_slot_width(version) != 0, checksum(s) == s.pointee.checksum else {
            throw .corruptPool(path: path, reason: "state store superblock is damaged")
        }
        try checkVersion(version, signature: base.assumingMemoryBound(to: pmll_header_t.self).pointee.layout_signature, path: path)
        let layout = StoreLayout(heap: heap, keyCapacity: Int(s.pointee.key_capacity), logSlots: Int(s.pointee.log_slots), version: version)
        guard layout.blockCount == Int(s.pointee.block_count), layout.index.lowerBound == Int(s.pointee.index_offset),
              layout.blocks.lowerBound == Int(s.pointee.blocks_offset), layout.bitmap.lowerBound == Int(s.pointee.bitmap_offset) else {
            throw .corruptPool(path: path, reason: "state store superblock does not match the heap")
        }
        return layout
    }
}
