package import CPMLL
package import PMLLCore

/// A run of value blocks with its own bitmap: the blocks made at creation, or a blocks area
/// appended by a growth. Block numbers are global: a span holds [first, first + count).
package struct BlockSpan: Sendable, Equatable {
    package let first: Int
    package let count: Int
    package let bitmapOffset: Int
    package let blocksOffset: Int
    package var end: Int { first + count }
}

/// The store's tables as its growth directory describes them at one generation: where the
/// key index is and how large, and the block spans. Immutable; a process makes a new one when
/// the directory's generation or checksum moves (``StateStore/refresh()``).
package final class StoreView: @unchecked Sendable {
    package let generation: UInt64
    /// The directory's checksum at that generation: a growth rolled back after a crash leaves
    /// the generation where it was, so the next growth publishes that generation again with
    /// other areas; a view is current only while both match.
    package let checksum: UInt32
    package let indexOffset: Int
    package let capacity: UInt32
    /// Bytes per key slot (the store's version decides: StoreLayout), and the record bytes a
    /// slot holds inline after its head.
    package let slotWidth: Int
    package var inlineMax: Int { slotWidth - Int(PMLL_KEY_SLOT_HEAD) }
    package let spans: [BlockSpan]
    /// The areas the directory names (none in a pool that never grew).
    package let areas: [pmll_area_t]
    /// Growths committed over the pool's life.
    package let growths: UInt32
    /// One past the highest block number.
    package let blockLimit: Int
    /// Blocks in all spans.
    package let blockCount: Int
    /// File bytes the directory names (its areas' end, or the created size).
    package let end: Int
    private let base: UnsafeMutableRawPointer

    package init(base: UnsafeMutableRawPointer, generation: UInt64, checksum: UInt32, indexOffset: Int, capacity: UInt32, slotWidth: Int,
                 spans: [BlockSpan], areas: [pmll_area_t], growths: UInt32, end: Int) {
        self.base = base
        self.slotWidth = slotWidth
        self.generation = generation
        self.checksum = checksum
        self.indexOffset = indexOffset
        self.capacity = capacity
        self.spans = spans
        self.areas = areas
        self.growths = growths
        self.blockLimit = spans.last?.end ?? 0
        self.blockCount = spans.reduce(0) { $0 + $1.count }
        self.end = end
    }

    @inline(__always)
    package func slot(_ i: UInt32) -> UnsafeMutablePointer<pmll_key_slot_t> {
        (base + indexOffset + Int(i) * slotWidth).assumingMemoryBound(to: pmll_key_slot_t.self)
    }

    package var index: Range<Int> { indexOffset..<(indexOffset + Int(capacity) * slotWidth) }

    /// The file bytes of every block span, its bitmap included.
    package var blockSpanBytes: [Range<Int>] { spans.map { $0.bitmapOffset..<($0.blocksOffset + $0.count * Int(PMLL_BLOCK_SIZE)) } }

    /// The span holding block `b`, if any (numbers between spans name no block).
    @inline(__always)
    package func span(of b: Int) -> BlockSpan? {
        if let s = spans.first, b >= s.first && b < s.end { return s }   // most blocks of most pools
        var low = 0, high = spans.count
        while low < high {
            let mid = (low + high) / 2
            if spans[mid].end <= b { low = mid + 1 } else { high = mid }
        }
        guard low < spans.count, spans[low].first <= b else { return nil }
        return spans[low]
    }

    /// The overflow area of undo-log slot `log`, if it has one.
    package func logOverflow(_ log: Int) -> pmll_area_t? {
        areas.first { $0.kind == PMLL_AREA_LOG && Int($0.first_block) == log }
    }

    /// Whether blocks [first, first + count) all exist, in one span.
    package func extentExists(first: Int, count: Int) -> Bool {
        guard count > 0, let s = span(of: first) else { return false }
        return first + count <= s.end
    }

    package func block(_ b: UInt32) -> UnsafeMutableRawPointer {
        let s = span(of: Int(b))!
        return base + s.blocksOffset + (Int(b) - s.first) * Int(PMLL_BLOCK_SIZE)
    }

    /// File offset of the bitmap byte holding blocks [8 * byte, 8 * byte + 8) (spans start on
    /// multiples of 8, so a byte never straddles two).
    package func bitmapOffset(byte: Int) -> Int {
        let s = span(of: byte * 8)!
        return s.bitmapOffset + (byte * 8 - s.first) / 8
    }

    package func bitmapByte(_ byte: Int) -> UnsafeMutablePointer<UInt8> {
        (base + bitmapOffset(byte: byte)).assumingMemoryBound(to: UInt8.self)
    }

    package func isAllocated(_ b: Int) -> Bool {
        guard span(of: b) != nil else { return true }   // not a block: never free
        return bitmapByte(b / 8).pointee & UInt8(1 << (b % 8)) != 0
    }

    /// Blocks marked allocated.
    package func blocksUsed() -> Int {
        var used = 0
        for s in spans {
            let bitmap = (base + s.bitmapOffset).assumingMemoryBound(to: UInt8.self)
            for byte in 0..<(s.count / 8) { used += bitmap[byte].nonzeroBitCount }
            if s.count % 8 != 0 { used += (bitmap[s.count / 8] & UInt8((1 << (s.count % 8)) - 1)).nonzeroBitCount }
        }
        return used
    }
}

extension GrowthDirectory {
    /// The view the directory describes, checked against the created layout and the limit.
    package static func view(_ base: UnsafeMutableRawPointer, layout: StoreLayout, poolLayout: PoolLayout, path: String) throws(PMLLError) -> StoreView {
        func damaged(_ reason: String) -> PMLLError { .corruptPool(path: path, reason: "state store growth directory: \(reason)") }
        // One copy, so that the generation, the checksum and the areas are of one directory.
        guard var copy = copy(base, heapStart: poolLayout.heap.lowerBound) else { throw damaged("it kept changing while it was read") }
        let created = BlockSpan(first: 0, count: layout.blockCount, bitmapOffset: layout.bitmap.lowerBound, blocksOffset: layout.blocks.lowerBound)
        guard copy.magic != 0 else {
            return StoreView(base: base, generation: 0, checksum: copy.checksum, indexOffset: layout.index.lowerBound,
                             capacity: UInt32(layout.keyCapacity), slotWidth: layout.slotWidth, spans: layout.blockCount > 0 ? [created] : [], areas: [], growths: 0,
                             end: poolLayout.heap.upperBound)
        }
        guard copy.magic == PMLL_GROWTH_MAGIC, copy.area_count <= PMLL_AREA_MAX else { throw damaged("bad magic or area count") }
        guard intact(copy) else { throw damaged("checksum mismatch") }
        let areas = withUnsafePointer(to: &copy) { Self.areas($0) }
        var spans = layout.blockCount > 0 ? [created] : []
        var end = poolLayout.growthStart
        var indexOffset = layout.index.lowerBound, capacity = UInt32(layout.keyCapacity)
        for (i, a) in areas.enumerated() {
            let offset = Int(clamping: a.offset), size = Int(clamping: a.size)
            // Compared without adding: a damaged size must not overflow.
            guard offset == end, size > 0, size % PoolLayout.page == 0, size <= poolLayout.sizeLimit - offset else {
                throw damaged("area \(i) at \(offset) of \(size) bytes does not follow the one before")
            }
            end = offset + size
            switch a.kind {
            case PMLL_AREA_FREE: break
            case PMLL_AREA_BLOCKS:
                let first = Int(a.first_block), count = Int(a.count), bitmap = Int(a.bitmap_bytes)
                guard first % 8 == 0, count > 0, bitmap % PoolLayout.page == 0, bitmap * 8 >= count,
                      bitmap + count * Int(PMLL_BLOCK_SIZE) <= size, first + count <= Int(UInt32.max) else {
                    throw damaged("blocks area \(i) is inconsistent")
                }
                spans.append(BlockSpan(first: first, count: count, bitmapOffset: offset, blocksOffset: offset + bitmap))
            case PMLL_AREA_INDEX:
                guard Int(a.count) * layout.slotWidth <= size, a.count >= 16 else { throw damaged("index area \(i) is inconsistent") }
            case PMLL_AREA_LOG:
                guard Int(a.first_block) < layout.logSlots, Int(a.count) <= size,
                      !areas[..<i].contains(where: { $0.kind == PMLL_AREA_LOG && $0.first_block == a.first_block }) else {
                    throw damaged("undo-log area \(i) is inconsistent")
                }
            case PMLL_AREA_REDO:
                guard a.first_block == 0, a.count > 0, Int(a.count) + PoolLayout.page <= size,
                      !areas[..<i].contains(where: { $0.kind == PMLL_AREA_REDO }) else {
                    throw damaged("redo-log area \(i) is inconsistent")
                }
            case PMLL_AREA_LOCKS, PMLL_AREA_QUEUES:
                let k = Int(a.first_block), locks = a.kind == PMLL_AREA_LOCKS
                let created = UInt64(locks ? poolLayout.lockCapacity : poolLayout.queueCapacity)
                guard k < Int(PMLL_EXTENSIONS_MAX), a.count > 0, a.count <= (locks ? PMLL_LOCK_ENTRIES_MAX : PMLL_QUEUES_MAX),
                      UInt64(a.count) == created << UInt64(k),
                      size >= PoolLayout.page + TableExtents.tableBytes(kind: a.kind, count: a.count, queueRing: poolLayout.queueRing),
                      !areas[..<i].contains(where: { $0.kind == a.kind && $0.first_block == a.first_block }) else {
                    throw damaged("\(locks ? "lock" : "queue")-table area \(i) is inconsistent")
                }
            default:
                throw damaged("area \(i) has unknown kind \(a.kind)")
            }
        }
        spans.sort { $0.first < $1.first }
        for (a, b) in zip(spans, spans.dropFirst()) where b.first < a.end { throw damaged("blocks areas overlap in block numbers") }
        if copy.index_area != PMLL_INDEX_CREATED {
            let i = Int(copy.index_area)
            guard i < areas.count, areas[i].kind == PMLL_AREA_INDEX else { throw damaged("the key index names area \(i), not an index") }
            indexOffset = Int(areas[i].offset)
            capacity = areas[i].count
        }
        // A pause point for tests: a growth by another process while this one stops here
        // must leave this view as it was read (one directory), not part of each.
        CrashPoint.hit("growth.read")
        return StoreView(base: base, generation: copy.generation, checksum: copy.checksum, indexOffset: indexOffset, capacity: capacity,
                         slotWidth: layout.slotWidth,
                         spans: spans, areas: areas, growths: copy.growths, end: end)
    }
}
