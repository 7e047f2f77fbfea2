package import CPMLL
package import PMLLCore
import PMLLLocks
package import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The persistent key-value store in the pool's heap: an open-addressing index of 128-byte
/// key slots and an extent allocator over block bitmaps. Records up to 88 bytes of key and
/// value live inline in their slot; larger ones in an extent of blocks (key, then value).
/// Values are never overwritten in place: a new value gets new blocks, so only slots and
/// bitmap bytes change in place, and only they need undo entries (Docs/Transactions.md).
/// The index and the block space grow into areas appended to the file (``StoreView``,
/// Docs/PoolFormat.md "Growth").
package final class StateStore: @unchecked Sendable {
    package let memory: PoolMemory
    /// The tables made at creation (superblock, census, logs, first index, first blocks).
    package let layout: StoreLayout
    package let path: String
    private let current: Mutex<StoreView>
    /// Where this process looks for free blocks next (next fit: most allocations take the
    /// blocks after the last ones, instead of rescanning a large bitmap from its start).
    package let allocationHint = Atomic<Int>(0)
    /// Tests only: point reads skip the free-lock shortcut, so that the optimistic path is
    /// what a test of it exercises.
    package let optimisticReadsOnly = Atomic<Bool>(false)

    // A class, not a struct: every transaction reaches the store several times through the
    // pool's services, and a reference costs one retain where a copy of the struct cost one
    // for each of its reference-counted fields.
    package init(memory: PoolMemory, layout: StoreLayout, path: String) throws(PMLLError) {
        self.memory = memory
        self.layout = layout
        self.path = path
        let view = try Self.readDirectory(memory: memory, layout: layout, path: path)
        try memory.mapping.ensureMapped(upTo: view.end)
        current = Mutex(view)
    }

    /// The directory as an attaching process finds it, without the store lock: a growth under
    /// way in another process (its undo log pending) may show a half-written directory for a
    /// moment, so that is read again. A failed read counts as damage only if no log was
    /// pending and none moved while it read: checking "pending" only after the read missed a
    /// growth that finished in between (a worker attaching during another's growth was told
    /// the pool was corrupt, in `fourProcessesGrowASmallPoolAndEveryOneFollows` under load).
    private static func readDirectory(memory: PoolMemory, layout: StoreLayout, path: String) throws(PMLLError) -> StoreView {
        let logs = memory.base + layout.logs.lowerBound
        func logState() -> (seqs: UInt64, dones: UInt64, pending: Bool) {
            var seqs: UInt64 = 0, dones: UInt64 = 0, pending = false
            for i in 0..<layout.logSlots {
                let h = (logs + i * Int(PMLL_LOG_SLOT_SIZE)).assumingMemoryBound(to: pmll_log_header_t.self)
                let done = pmll_load64_acquire(&h.pointee.done_seq), seq = pmll_load64_acquire(&h.pointee.seq)
                seqs &+= seq
                dones &+= done
                pending = pending || done < seq
            }
            return (seqs, dones, pending)
        }
        for attempt in 0..<1000 {
            let before = logState()
            do throws(PMLLError) {
                return try GrowthDirectory.view(memory.base, layout: layout, poolLayout: memory.layout, path: path)
            } catch {
                pmll_fence()
                let after = logState()
                let moving = before.pending || after.pending || before.seqs != after.seqs || before.dones != after.dones
                // A log left pending by a dead process stays so: rolled back by the first
                // holder of the store lock, which a damaged directory would then fail.
                guard moving, attempt < 999 else { throw error }
                usleep(1000)
            }
        }
        return try GrowthDirectory.view(memory.base, layout: layout, poolLayout: memory.layout, path: path)
    }

    /// The tables as this process last read them from the directory.
    package var view: StoreView { current.withLock { $0 } }

    package var directory: UnsafeMutablePointer<pmll_growth_t> { GrowthDirectory.pointer(memory.base, heapStart: memory.layout.heap.lowerBound) }

    package var directoryRange: Range<Int> {
        let start = offset(of: directory)
        return start..<(start + MemoryLayout<pmll_growth_t>.size)
    }

    /// Re-reads the directory if another process changed it (a growth), mapping what it adds.
    /// Under the store lock, or in a read that validates itself afterwards: such a read may
    /// cache the directory of a growth not yet committed, which is whole (one copy, checksum
    /// checked) and is replaced if that growth is rolled back, since then the generation or,
    /// once another growth takes the same generation, the checksum differs.
    /// A view replaces only the one it was compared with: a thread whose copy is older than what
    /// another thread of the process cached meanwhile (perhaps under the store lock, right
    /// after its own growth) must not put it back.
    @discardableResult
    package func refresh() throws(PMLLError) -> StoreView {
        while true {
            let known = view
            guard pmll_load64_acquire(&directory.pointee.generation) != known.generation
                    || pmll_load32(&directory.pointee.checksum) != known.checksum else { return known }
            let fresh = try GrowthDirectory.view(memory.base, layout: layout, poolLayout: memory.layout, path: path)
            try memory.mapping.ensureMapped(upTo: fresh.end)
            let replaced = current.withLock { (cached: inout StoreView) -> Bool in
                guard cached === known else { return false }
                cached = fresh
                return true
            }
            if replaced { return fresh }
        }
    }

    package static func validate(key: String, user: Bool = false) throws(PMLLError) {
        if user && key.hasPrefix("pmll:") { throw .invalidKey(key: key, reason: "keys starting with 'pmll:' are reserved for the library") }
        let bytes = key.utf8.count
        guard bytes > 0 else { throw .invalidKey(key: key, reason: "empty") }
        guard bytes <= Int(PMLL_KEY_MAX) else { throw .invalidKey(key: String(key.prefix(40)) + "…", reason: "\(bytes) bytes; the limit is \(PMLL_KEY_MAX)") }
        guard !key.utf8.contains(0) else { throw .invalidKey(key: key, reason: "contains NUL") }
    }

    package var capacity: UInt32 { view.capacity }
    /// Blocks in all spans (0: a pool created without a state store).
    package var blockCount: Int { view.blockCount }
    /// Whether the pool has a state store at all.
    package var exists: Bool { layout.blockCount > 0 }

    package func slot(_ i: UInt32) -> UnsafeMutablePointer<pmll_key_slot_t> { view.slot(i) }
    package func block(_ b: UInt32) -> UnsafeMutableRawPointer { view.block(b) }
    package func logHeader(_ i: Int) -> UnsafeMutablePointer<pmll_log_header_t> {
        (memory.base + layout.logs.lowerBound + i * Int(PMLL_LOG_SLOT_SIZE)).assumingMemoryBound(to: pmll_log_header_t.self)
    }
    package func offset(of pointer: UnsafeRawPointer) -> Int { pointer - UnsafeRawPointer(memory.base) }

    // MARK: lookup

    /// The slot holding `key`, and the first reusable slot on its probe chain.
    package func find(_ key: [UInt8]) throws(PMLLError) -> (found: UInt32?, free: UInt32?) {
        try find(key, in: view)
    }

    /// ``find(_:)`` in `view` (a point read takes the view once: each `view` is a mutex and a
    /// retain).
    package func find(_ key: [UInt8], in view: StoreView) throws(PMLLError) -> (found: UInt32?, free: UInt32?) {
        var found: (found: UInt32?, free: UInt32?) = (nil, nil), failure: PMLLError?
        key.withUnsafeBytes { bytes in
            do throws(PMLLError) { found = try find(bytes: bytes, in: view) } catch { failure = error }
        }
        if let failure { throw failure }
        return found
    }

    /// ``find(_:in:)`` for a key given as a string, whose bytes are not copied into an array
    /// (a point read and a commit looked up every key through one, an allocation each).
    package func find(_ key: String, in view: StoreView) throws(PMLLError) -> (found: UInt32?, free: UInt32?) {
        // Not through a Result: its tuple type's metadata was looked up at run time on every
        // call (`_swift_getGenericMetadata`, 2 % of four processes' commits).
        var key = key, found: (found: UInt32?, free: UInt32?) = (nil, nil), failure: PMLLError?
        key.withUTF8 { bytes in
            do throws(PMLLError) { found = try find(bytes: UnsafeRawBufferPointer(bytes), in: view) } catch { failure = error }
        }
        if let failure { throw failure }
        return found
    }

    private func find(bytes key: UnsafeRawBufferPointer, in view: StoreView) throws(PMLLError) -> (found: UInt32?, free: UInt32?) {
        let hash = pmll_crc32c(0, key.baseAddress, key.count)
        let capacity = view.capacity
        var free: UInt32?
        for probe in 0..<capacity {
            let i = (hash &+ probe) % capacity
            let s = view.slot(i)
            switch s.pointee.state {
            case PMLL_KEY_EMPTY: return (nil, free ?? i)
            case PMLL_KEY_TOMBSTONE: if free == nil { free = i }
            case PMLL_KEY_USED:
                if s.pointee.key_hash == hash && s.pointee.key_length == UInt32(key.count) && storedKeyEquals(view, i, key) { return (i, free) }
            default:
                throw .corruptPool(path: path, reason: "key slot \(i) has unknown state \(s.pointee.state)")
            }
        }
        return (nil, free)
    }

    /// The record bytes (key then value) of a used slot, checked against its checksum.
    package func record(_ i: UInt32) throws(PMLLError) -> [UInt8] {
        Array(try recordInPlace(i))
    }

    /// Records from this size on are read ahead before their checksum is computed.
    static let prefetchBytes = 64 << 10

    /// The record bytes in the mapping (no copy), checked against its checksum. Valid while
    /// the store lock is held.
    package func recordInPlace(_ i: UInt32) throws(PMLLError) -> UnsafeRawBufferPointer {
        try recordInPlace(i, in: view)
    }

    /// ``recordInPlace(_:)`` in `view`.
    package func recordInPlace(_ i: UInt32, in view: StoreView) throws(PMLLError) -> UnsafeRawBufferPointer {
        let s = view.slot(i)
        let length = Int(s.pointee.key_length) + Int(s.pointee.value_length)
        guard s.pointee.key_length <= PMLL_KEY_MAX, s.pointee.value_length <= PMLL_VALUE_MAX else {
            throw .corruptRecord(key: "#\(i)", reason: "impossible lengths")
        }
        let bytes: UnsafeRawBufferPointer
        if s.pointee.block_count == 0 {
            guard length <= view.inlineMax else { throw .corruptRecord(key: "#\(i)", reason: "inline record too long") }
            bytes = UnsafeRawBufferPointer(start: Self.inlineRecord(s), count: length)
        } else {
            guard view.extentExists(first: Int(s.pointee.first_block), count: Int(s.pointee.block_count)),
                  Int(s.pointee.block_count) * Int(PMLL_BLOCK_SIZE) >= length else {
                throw .corruptRecord(key: "#\(i)", reason: "extent out of range")
            }
            bytes = UnsafeRawBufferPointer(start: view.block(s.pointee.first_block), count: length)
            // The checksum reads it all: a large one is asked for at once, not a page a fault.
            if length >= Self.prefetchBytes { pmll_prefetch(bytes.baseAddress!, UInt64(length)) }
        }
        guard Self.checksum(s, record: bytes) == s.pointee.checksum else {
            let name = String(decoding: bytes.prefix(Int(s.pointee.key_length)), as: UTF8.self)
            throw .corruptRecord(key: name, reason: "checksum mismatch")
        }
        return bytes
    }

    /// Compares in place; a damaged key simply does not match (reading its value reports it).
    func storedKeyEquals(_ view: StoreView, _ i: UInt32, _ key: UnsafeRawBufferPointer) -> Bool {
        let s = view.slot(i)
        if s.pointee.block_count == 0 {
            guard key.count <= view.inlineMax else { return false }
            return UnsafeRawBufferPointer(start: Self.inlineRecord(s), count: key.count).elementsEqual(key)
        }
        guard view.extentExists(first: Int(s.pointee.first_block), count: Int(s.pointee.block_count)),
              Int(s.pointee.block_count) * Int(PMLL_BLOCK_SIZE) >= key.count else { return false }
        return UnsafeRawBufferPointer(start: view.block(s.pointee.first_block), count: key.count).elementsEqual(key)
    }

    package func key(of i: UInt32) throws(PMLLError) -> [UInt8] {
        Array(try record(i).prefix(Int(slot(i).pointee.key_length)))
    }

    /// Where a slot's inline record (key, then value) starts: right after the slot's head.
    @inline(__always)
    package static func inlineRecord(_ s: UnsafeMutablePointer<pmll_key_slot_t>) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(s) + Int(PMLL_KEY_SLOT_HEAD)
    }

    package static func checksum(_ s: UnsafeMutablePointer<pmll_key_slot_t>, record: [UInt8]) -> UInt32 {
        record.withUnsafeBytes { checksum(s, record: $0) }
    }

    package static func checksum(_ s: UnsafeMutablePointer<pmll_key_slot_t>, record: UnsafeRawBufferPointer) -> UInt32 {
        var fields = (s.pointee.key_hash, s.pointee.key_length, s.pointee.value_length, s.pointee.first_block, s.pointee.block_count)
        var crc = withUnsafeBytes(of: &fields) { pmll_crc32c(0, $0.baseAddress, $0.count) }
        crc = withUnsafeBytes(of: s.pointee.version) { pmll_crc32c(crc, $0.baseAddress, $0.count) }
        return pmll_crc32c(crc, record.baseAddress, record.count)
    }

    // MARK: space

    package func usage() throws(PMLLError) -> StoreUsage {
        let view = self.view
        let redo = view.redoArea.flatMap { area -> UnsafeMutablePointer<pmll_redo_header_t>? in
            let h = (memory.base + Int(area.offset)).assumingMemoryBound(to: pmll_redo_header_t.self)
            return pmll_load64_acquire(&h.pointee.magic) == PMLL_REDO_MAGIC ? h : nil
        }
        // The census when it is intact: counting the slots reads the whole index (256 MiB at
        // a million keys) for every `pmll status`.
        return StoreUsage(keysUsed: Int(censusCount ?? countUsedSlots()), keyCapacity: Int(view.capacity), keySlotBytes: view.slotWidth, blocksUsed: view.blocksUsed(), blockCount: view.blockCount,
                          blockSize: Int(PMLL_BLOCK_SIZE), logSlots: layout.logSlots,
                          fileBytes: try memory.mapping.fileSize(), sizeLimit: memory.layout.sizeLimit, createdBytes: memory.layout.heap.upperBound,
                          areas: view.areas.count, freeAreaBytes: view.areas.filter { $0.kind == PMLL_AREA_FREE }.reduce(0) { $0 + Int($1.size) },
                          growths: Int(view.growths), redoLogBytes: Int(redo?.pointee.capacity ?? 0),
                          redoUnsettledBytes: redo.map { Int(clamping: pmll_load64(&$0.pointee.tail) &- $0.pointee.checkpoint) } ?? 0,
                          redoFlushes: redo.map { pmll_load64(&$0.pointee.flushes) } ?? 0,
                          redoFlushedCommits: redo.map { pmll_load64(&$0.pointee.flushed_commits) } ?? 0,
                          redoFlushNanoseconds: redo.map { pmll_load64(&$0.pointee.flush_total_ns) } ?? 0,
                          redoGroupWaitNanoseconds: redo.map { pmll_load64(&$0.pointee.gather_total_ns) } ?? 0)
    }
}

/// Space in the state store, as `pmll status` shows it.
public struct StoreUsage: Codable, Sendable, Equatable {
    public let keysUsed: Int
    public let keyCapacity: Int
    /// Bytes per key slot: 256 (records of up to 216 bytes kept in the slot), or 128 (88) in a
    /// pool created before 2026-12-05.
    public let keySlotBytes: Int
    public let blocksUsed: Int
    public let blockCount: Int
    public let blockSize: Int
    public let logSlots: Int
    /// The pool file's size now, what it was created with, and how far it may grow.
    public let fileBytes: Int
    public let sizeLimit: Int
    public let createdBytes: Int
    /// Areas appended by growths, the bytes of those no longer used (an index that moved),
    /// and the growths committed.
    public let areas: Int
    public let freeAreaBytes: Int
    public let growths: Int
    /// The redo log's ring (0: the pool has none) and the bytes of records a settle has not
    /// yet put in place for good (Docs/Transactions.md "The redo log").
    public let redoLogBytes: Int
    public let redoUnsettledBytes: Int
    /// Since the redo log was made: its flushes, the commits they covered, and the time spent
    /// in the flushes and, before them, waiting for the group (Docs/Transactions.md "The
    /// shared flush"). Commits per flush is the group commit's gain.
    public let redoFlushes: UInt64
    public let redoFlushedCommits: UInt64
    public let redoFlushNanoseconds: UInt64
    public let redoGroupWaitNanoseconds: UInt64
}
