import CPMLL
import PMLLCore
#if canImport(Glibc)
import Glibc
#endif

/// Growth of the state store (Docs/PoolFormat.md "Growth"): the key index and the block space
/// grow into areas appended to the pool file while every process keeps it open.
///
/// A growth is a transaction of its own, under the store lock, made before the commit that
/// needs the room plans anything:
/// 1. place: reuse a free area that is large enough, else append one at the directory's end:
///    fallocate its blocks and make the new size durable (a write through the mapping must
///    never meet a full file system as SIGBUS), then map it;
/// 2. fill: zero a blocks area's bitmap, or copy every key slot into a new index twice the
///    size; persist;
/// 3. publish: undo-log the directory, write the new one (generation + 1), persist, and move
///    the log's commit point. Other processes see the generation move when they next take the
///    store lock and map what the directory adds.
/// A crash before 3 leaves bytes the directory does not name (reused by the next growth); a
/// crash inside 3 is rolled back like any transaction.
extension Pool {
    /// Index slots grow when live keys would pass this fraction of them.
    static let indexLoadLimit = 0.5
    /// Blocks areas: the block space doubles (at least 1 MiB) up to 8 GiB, then grows by a
    /// quarter, so that even a 1 TiB pool needs about 30 blocks areas of the directory's 96.
    static func blocksStep(_ space: Int) -> Int {
        max(1 << 20, space <= 8 << 30 ? space : max(8 << 30, space / 4))
    }

    /// Makes room in the index for `inserts` more keys beside `live` ones.
    func ensureIndexRoom(_ store: StateStore, live: Int, inserts: Int) throws(PMLLError) {
        let capacity = Int(store.view.capacity)
        guard Double(live + inserts) > Double(capacity) * Self.indexLoadLimit else { return }
        var wanted = capacity * 2
        while Double(live + inserts) > Double(wanted) * Self.indexLoadLimit { wanted *= 2 }
        do throws(PMLLError) {
            guard wanted <= Int(UInt32.max) else { throw .poolFull(table: "state store keys", capacity: capacity) }
            try growIndex(store, capacity: wanted)
        } catch {
            // No room to grow: the index still takes keys until its last slot (only lookups
            // get slower), so only then is the growth's error the commit's.
            switch error {
            case .sizeLimitReached, .noSpace, .poolFull: if live + inserts <= capacity { return }
            default: break
            }
            throw error
        }
    }

    /// Moves the key index into a new area of `capacity` slots.
    func growIndex(_ store: StateStore, capacity: Int) throws(PMLLError) {
        let old = try store.refresh()
        let width = old.slotWidth
        let size = PoolLayout.roundUp(capacity * width)
        let place = try placeArea(store, old, size: size)
        let area = memory.base + place.offset
        // Every page of the new index is written below (a million keys: 512 MiB, 131,072
        // pages): mapped in one call, not one fault each.
        pmll_populate_for_write(area, place.size)
        // A reused area, or one a crashed growth began to fill, holds old bytes; an area the
        // file grew by just now reads as zeros already.
        if !place.fresh { area.initializeMemory(as: UInt8.self, repeating: 0, count: place.size) }
        let count = UInt32(capacity)
        memory.prefetch(old.index)
        func slot(_ i: UInt32) -> UnsafeMutablePointer<pmll_key_slot_t> { (area + Int(i) * width).assumingMemoryBound(to: pmll_key_slot_t.self) }
        for i in 0..<old.capacity {
            let s = old.slot(i)
            guard s.pointee.state == PMLL_KEY_USED else { continue }
            var probe: UInt32 = 0
            while slot((s.pointee.key_hash &+ probe) % count).pointee.state != PMLL_KEY_EMPTY { probe += 1 }
            UnsafeMutableRawPointer(slot((s.pointee.key_hash &+ probe) % count)).copyMemory(from: s, byteCount: width)
        }
        try memory.persistence.persist(UnsafeRawPointer(area), place.size, site: "growth.fill")
        CrashPoint.hit("growth.filled")
        try publish(store, site: "index") { d in
            let entry = pmll_area_t(offset: UInt64(place.offset), size: UInt64(place.size), kind: PMLL_AREA_INDEX, first_block: 0,
                                    count: count, bitmap_bytes: 0)
            let at = Self.put(entry, reusing: place.reused, into: &d)
            if d.index_area != PMLL_INDEX_CREATED { Self.setKind(PMLL_AREA_FREE, area: Int(d.index_area), in: &d) }
            d.index_area = UInt32(at)
        }
        Self.logger.notice("state store key index grew", metadata: ["path": "\(path)", "slots": "\(capacity)", "bytes": "\(place.size)"])
    }

    /// Appends a blocks area with room for an extent of at least `blocks` blocks.
    func growBlocks(_ store: StateStore, atLeast blocks: Int) throws(PMLLError) {
        let old = try store.refresh()
        let needed = PoolLayout.roundUp((blocks + 7) / 8) + PoolLayout.roundUp(blocks * Int(PMLL_BLOCK_SIZE)) + PoolLayout.page
        let step = Self.blocksStep(old.blockCount * Int(PMLL_BLOCK_SIZE))
        let room = memory.layout.sizeLimit - old.end
        let size = PoolLayout.roundUp(max(needed, min(step, room)))
        // An index area the index moved out of takes blocks as well as new file space would.
        let place = try placeArea(store, old, size: size, reusing: needed)
        let (count, bitmapBytes) = Self.blocksFitting(place.size)
        let first = (old.blockLimit + 7) / 8 * 8
        guard count >= blocks, first + count <= Int(UInt32.max) else {
            throw .poolFull(table: "state store blocks", capacity: old.blockCount)
        }
        (memory.base + place.offset).initializeMemory(as: UInt8.self, repeating: 0, count: bitmapBytes)
        try memory.persistence.persist(UnsafeRawPointer(memory.base + place.offset), bitmapBytes, site: "growth.fill")
        CrashPoint.hit("growth.filled")
        try publish(store, site: "blocks") { d in
            let entry = pmll_area_t(offset: UInt64(place.offset), size: UInt64(place.size), kind: PMLL_AREA_BLOCKS,
                                    first_block: UInt32(first), count: UInt32(count), bitmap_bytes: UInt32(bitmapBytes))
            _ = Self.put(entry, reusing: place.reused, into: &d)
        }
        store.allocationHint.store(first, ordering: .relaxed)
        Self.logger.notice("state store block space grew", metadata: ["path": "\(path)", "blocks": "\(count)", "bytes": "\(place.size)"])
    }

    /// Gives undo-log slot `log` an overflow area of at least `bytes` (its former one, if
    /// any, becomes free).
    func growLog(_ store: StateStore, log: Int, bytes: Int) throws(PMLLError) {
        let old = try store.refresh()
        let place = try placeArea(store, old, size: PoolLayout.roundUp(bytes))
        guard place.size <= Int(UInt32.max) else { throw .transactionTooLarge(keys: 0, bytes: bytes, limit: Int(UInt32.max)) }
        CrashPoint.hit("growth.filled")
        let previous = old.areas.firstIndex { $0.kind == PMLL_AREA_LOG && Int($0.first_block) == log }
        try publish(store, site: "undo log \(log)") { d in
            if let previous { Self.setKind(PMLL_AREA_FREE, area: previous, in: &d) }
            let entry = pmll_area_t(offset: UInt64(place.offset), size: UInt64(place.size), kind: PMLL_AREA_LOG, first_block: UInt32(log),
                                    count: UInt32(place.size), bitmap_bytes: 0)
            _ = Self.put(entry, reusing: place.reused, into: &d)
        }
    }

    /// Makes extension `k` of the lock table or of the queue table (``TableExtents``): an area
    /// of one header page and the extension's zeroed elements, named by the directory as a
    /// growth of its own; then, after that commit, its header (only an intact header makes
    /// processes use the area). If the directory names extension k already (another process
    /// made it, or its maker died before the header), only a missing header is written.
    func growTable(_ kind: UInt32, _ k: Int) throws(PMLLError) {
        _ = try storeLock(mayGrow: false)
        let extents = kind == PMLL_AREA_LOCKS ? memory.lockExtents : memory.queueExtents
        guard k < extents.extensionLimit else {
            throw .poolFull(table: kind == PMLL_AREA_LOCKS ? "lock" : "queue", capacity: Int(extents.maximum))
        }
        try withStoreLock { () throws(PMLLError) in
            let store = self.store
            let old = try store.refresh()
            let count = extents.count(k)
            let offset: Int
            if let area = old.areas.first(where: { $0.kind == kind && Int($0.first_block) == k }) {
                offset = Int(area.offset)
            } else {
                let bytes = TableExtents.tableBytes(kind: kind, count: count, queueRing: memory.layout.queueRing)
                let place = try placeArea(store, old, size: PoolLayout.page + PoolLayout.roundUp(bytes))
                // A reused area holds old bytes; every element must start EMPTY.
                (memory.base + place.offset).initializeMemory(as: UInt8.self, repeating: 0, count: place.size)
                try memory.persistence.persist(UnsafeRawPointer(memory.base + place.offset), place.size, site: "growth.fill")
                CrashPoint.hit("growth.filled")
                let table = kind == PMLL_AREA_LOCKS ? "lock table" : "queue table"
                try publish(store, site: table, describe: { end in "\(table) grew by \(count) entries (extension \(k)): file \(end) bytes" }) { d in
                    let entry = pmll_area_t(offset: UInt64(place.offset), size: UInt64(place.size), kind: kind,
                                            first_block: UInt32(k), count: count, bitmap_bytes: 0)
                    _ = Self.put(entry, reusing: place.reused, into: &d)
                }
                offset = place.offset
            }
            guard !TableExtents.intact(memory.base + offset, magic: extents.magic, k: k, created: extents.created) else { return }
            // The checksum covers the magic; the magic is stored last, so a reader that sees it
            // sees the rest.
            let header = (memory.base + offset).assumingMemoryBound(to: pmll_table_area_t.self)
            var fields = pmll_table_area_t(magic: extents.magic, ordinal: UInt32(k), first: count, count: count, checksum: 0)
            fields.checksum = withUnsafeMutablePointer(to: &fields) { TableExtents.checksum($0) }
            header.pointee.ordinal = fields.ordinal
            header.pointee.first = fields.first
            header.pointee.count = fields.count
            header.pointee.checksum = fields.checksum
            try memory.persistence.persist(UnsafeRawPointer(header), MemoryLayout<pmll_table_area_t>.size, site: "table.area")
            pmll_store64_release(&header.pointee.magic, extents.magic)
            try memory.persistence.persist(UnsafeRawPointer(header), MemoryLayout<pmll_table_area_t>.size, site: "table.area")
            Self.logger.notice("table grew", metadata: ["path": "\(path)", "table": "\(kind == PMLL_AREA_LOCKS ? "lock" : "queue")",
                                                        "extension": "\(k)", "elements": "\(count)"])
        }
    }

    /// Blocks and bitmap bytes (a page multiple) that fit an area of `size` bytes.
    static func blocksFitting(_ size: Int) -> (count: Int, bitmapBytes: Int) {
        var count = (size - PoolLayout.page) * 8 / (8 * Int(PMLL_BLOCK_SIZE) + 1)
        count = max(0, count / 8 * 8)
        var bitmap = PoolLayout.roundUp(max(1, count / 8))
        while count > 0 && bitmap + count * Int(PMLL_BLOCK_SIZE) > size {
            count -= 8
            bitmap = PoolLayout.roundUp(max(1, count / 8))
        }
        return (count, bitmap)
    }

    /// Where an area of `size` bytes goes: the smallest free area that holds it (whole), else
    /// the end of the directory's areas, reserved in the file and mapped.
    /// `reusing`: the least a free area must hold to be taken instead (default `size`).
    /// `fresh`: the file ended at `offset` until this call, so the area reads as zeros.
    func placeArea(_ store: StateStore, _ view: StoreView, size: Int, reusing least: Int? = nil) throws(PMLLError)
        -> (offset: Int, size: Int, reused: Int?, fresh: Bool) {
        if let (i, area) = view.areas.enumerated().filter({ $0.element.kind == PMLL_AREA_FREE && Int($0.element.size) >= (least ?? size) })
            .min(by: { $0.element.size < $1.element.size }) {
            // Its blocks were given back when it became free (releaseFreeAreas).
            try memory.mapping.reserve(offset: Int(area.offset), length: Int(area.size))
            return (Int(area.offset), Int(area.size), i, false)
        }
        guard view.areas.count < Int(PMLL_AREA_MAX) else { throw .poolFull(table: "growth areas", capacity: Int(PMLL_AREA_MAX)) }
        let offset = view.end
        guard offset + size <= memory.layout.sizeLimit else {
            throw .sizeLimitReached(path: path, limit: memory.layout.sizeLimit, needed: offset + size)
        }
        // Longer than the directory says: a growth that crashed before its commit left bytes.
        let fresh = try memory.mapping.fileSize() <= offset
        try memory.mapping.grow(offset: offset, length: size, persistence: memory.persistence)
        CrashPoint.hit("growth.reserved")
        return (offset, size, nil, fresh)
    }

    static func put(_ entry: pmll_area_t, reusing: Int?, into d: inout pmll_growth_t) -> Int {
        let at = reusing ?? Int(d.area_count)
        withUnsafeMutableBytes(of: &d.areas) { $0.bindMemory(to: pmll_area_t.self)[at] = entry }
        if reusing == nil { d.area_count += 1 }
        return at
    }

    private static func setKind(_ kind: UInt32, area i: Int, in d: inout pmll_growth_t) {
        withUnsafeMutableBytes(of: &d.areas) { $0.bindMemory(to: pmll_area_t.self)[i].kind = kind }
    }

    /// Step 3: the directory changes as one transaction through this process's undo log.
    /// `describe`: the audit record's text from the file's new end (default: the store's tables).
    func publish(_ store: StateStore, site: String, describe: ((Int) -> String)? = nil, _ change: (inout pmll_growth_t) -> Void) throws(PMLLError) {
        let directory = store.directory
        var next = directory.pointee
        if next.magic == 0 { next.index_area = PMLL_INDEX_CREATED }
        change(&next)
        next.magic = PMLL_GROWTH_MAGIC
        next.generation &+= 1
        next.growths &+= 1
        next.checksum = withUnsafePointer(to: &next) { GrowthDirectory.checksum($0) }
        let header = try writeUndoLog(store, ranges: [(store.directoryRange.lowerBound, store.directoryRange.count)], keys: 0)
        CrashPoint.hit("growth.logged")
        directory.pointee = next
        try memory.persistence.persist(UnsafeRawPointer(directory), MemoryLayout<pmll_growth_t>.size, site: "growth.directory")
        CrashPoint.hit("growth.applied")
        pmll_store64_release(&header.pointee.done_seq, header.pointee.seq)
        try memory.persistence.persist(UnsafeRawPointer(header), 8, site: "growth.commit")
        CrashPoint.hit("growth.committed")
        try store.refresh()
        releaseFreeAreas(store.view)
        audit(.grow, .ok, describe?(store.view.end) ?? "state store \(site) grew: file \(store.view.end) bytes, \(store.view.capacity) key slots, \(store.view.blockCount) blocks")
    }

    /// Gives the blocks of every free area back to the file system once the growth that freed
    /// it is committed (an index that doubled leaves the old one: half the file at a million
    /// keys). Every growth does it for all of them, so areas freed by a build that kept them,
    /// or by a process killed before this, are given back too. A free area is reserved again
    /// before it is reused (placeArea), and attaching allocates holes everywhere except in free
    /// areas (PoolFileBlocks). Not on tmpfs: a read of a hole there allocates a page, and a
    /// reader of a stale view (or a backup's prefault) could meet a full tmpfs as SIGBUS.
    private func releaseFreeAreas(_ view: StoreView) {
        guard !memory.persistence.volatileStorage else { return }
        for area in view.areas where area.kind == PMLL_AREA_FREE {
            memory.mapping.release(offset: Int(area.offset), length: Int(area.size))
        }
    }
}
