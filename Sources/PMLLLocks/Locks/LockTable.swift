import CPMLL
package import Synchronization
package import SystemPackage
package import PMLLCore

/// The pool's table of named locks: open addressing on CRC32C of the name. Entries are
/// never removed, so lookups of existing names need no lock: a READY entry is immutable
/// apart from its volatile words. Creating an entry is serialised across processes by an
/// OFD lock on the TABLE byte (the kernel drops it if the creator dies) and inside the
/// process by a mutex (OFD locks do not exclude threads sharing a descriptor).
package struct LockTable {
    package let memory: PoolMemory
    package let fd: FileDescriptor
    package let path: String
    /// Makes extension k of the table (nil: this pool's table cannot grow).
    package let grow: (@Sendable (Int) throws(PMLLError) -> Void)?

    /// Lock names starting with this are the library's own (queue submit locks).
    package static let reservedPrefix = "pmll:"

    package static func validate(name: String, allowReserved: Bool = false) throws(PMLLError) {
        if !allowReserved && name.hasPrefix(reservedPrefix) {
            throw .invalidLockName(name: name, reason: "names starting with '\(reservedPrefix)' are reserved for the library")
        }
        let bytes = name.utf8.count
        guard bytes > 0 else { throw .invalidLockName(name: name, reason: "empty") }
        guard bytes <= Int(PMLL_NAME_MAX) else {
            throw .invalidLockName(name: String(name.prefix(40)) + "…", reason: "\(bytes) bytes; the limit is \(PMLL_NAME_MAX)")
        }
        guard !name.utf8.contains(0) else { throw .invalidLockName(name: name, reason: "contains NUL") }
    }

    package static func checksum(level: UInt32, name: [UInt8]) -> UInt32 {
        var fields = [level, UInt32(name.count)]
        let head = fields.withUnsafeMutableBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }
        return name.withUnsafeBytes { pmll_crc32c(head, $0.baseAddress, $0.count) }
    }

    /// One table: the one made at creation, or an extension (``TableExtents``).
    private struct Table {
        let entries: UnsafeMutablePointer<pmll_lock_entry_t>
        let first: UInt32
        let count: UInt32
        /// Whether a later table can still be made: then an insertion that finds no free entry
        /// within ``LockTable/insertProbes`` moves on, so that probes stay short everywhere.
        let canGrow: Bool
        /// Whether a name may lie any number of probes from its start: in the created table
        /// (older builds filled it to the last entry) and in the last table the pool can have.
        /// In every other extension a name lies within ``LockTable/insertProbes`` of its start,
        /// so a lookup stops there.
        let unbounded: Bool

        /// Probes a lookup makes before it knows the name is not in this table (it stops at an
        /// EMPTY entry before that).
        var lookupProbes: UInt32 { unbounded ? count : min(LockTable.insertProbes, count) }
    }

    /// Probes an insertion makes in a table that can still grow before it tries the next one
    /// (or grows). Short, so that tables stay at most about three quarters full and a lookup of
    /// an absent name (every creation begins with one) meets EMPTY within a few probes: with 32,
    /// tables filled to the last few percent and creating the 100,000th lock cost 1.3 ms.
    static let insertProbes: UInt32 = 8

    /// The tables this process knows, in lookup order.
    private func tables() -> [Table] {
        let extents = memory.lockExtents
        let limit = extents.extensionLimit
        var all = [Table(entries: memory.lock(LockIndex(0)), first: 0, count: memory.lockCapacity, canGrow: limit > 0, unbounded: true)]
        for k in 0..<limit {
            guard let t = extents.table(k) else { break }
            all.append(Table(entries: t.area.assumingMemoryBound(to: pmll_lock_entry_t.self), first: t.first, count: t.count,
                             canGrow: k + 1 < limit, unbounded: k + 1 == limit))
        }
        return all
    }

    /// Finds the entry for `name`, creating it if `create` is set. A full table grows (an
    /// extension made through the state store, ``PoolHooks/growTable``), outside the
    /// creation locks, and the creation is tried again.
    /// `mayGrow` false: take any free entry of the known tables instead (the store lock's own
    /// entry, which a growth needs).
    package func index(of name: String, level: LockLevel, create: Bool, creation: borrowing Mutex<Void>, allowReserved: Bool = false,
                       mayGrow: Bool = true) throws(PMLLError) -> LockIndex? {
        try Self.validate(name: name, allowReserved: allowReserved)
        let bytes = Array(name.utf8)
        if let found = try find(bytes, name: name) { return try checked(found, name: name, level: level) }
        guard create else { return nil }
        while true {
            let outcome = try creation.withLock { _ throws(PMLLError) -> Creation in
                try TableCreationLock.withHeld(fd: fd) { () throws(PMLLError) -> Creation in
                    if let found = try find(bytes, name: name) { return .found(found) }
                    if let made = try insert(bytes, level: level, anywhere: !mayGrow) { return .made(made) }
                    return .full(extensions: tables().count - 1)
                }
            }
            switch outcome {
            case .found(let found): return try checked(found, name: name, level: level)
            case .made(let index): return index
            case .full(let k):
                guard mayGrow, let grow else { throw .poolFull(table: "lock", capacity: Int(memory.lockExtents.known)) }
                try grow(k)
            }
        }
    }

    private enum Creation {
        case found((index: LockIndex, level: LockLevel))
        case made(LockIndex)
        case full(extensions: Int)
    }

    /// The entry for `name` and its level, or nil if the pool has no lock of that name.
    package func lookup(_ name: String) throws(PMLLError) -> (index: LockIndex, level: LockLevel)? {
        try Self.validate(name: name, allowReserved: true)
        return try find(Array(name.utf8), name: name)
    }

    private func checked(_ found: (index: LockIndex, level: LockLevel), name: String, level: LockLevel) throws(PMLLError) -> LockIndex {
        guard found.level == level else { throw .levelMismatch(name: name, existing: found.level, requested: level) }
        return found.index
    }

    /// Looks in every table this process knows; on a miss, learns extensions other processes
    /// made since and looks in those.
    private func find(_ bytes: [UInt8], name: String) throws(PMLLError) -> (index: LockIndex, level: LockLevel)? {
        let hash = bytes.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }
        var known = tables()
        for table in known {
            if let found = try find(bytes, hash: hash, name: name, in: table) { return found }
        }
        guard known.last!.canGrow else { return nil }
        memory.lockExtents.learn()
        let more = tables().dropFirst(known.count)
        known = Array(more)
        for table in known {
            if let found = try find(bytes, hash: hash, name: name, in: table) { return found }
        }
        return nil
    }

    private func find(_ bytes: [UInt8], hash: UInt32, name: String, in table: Table) throws(PMLLError) -> (index: LockIndex, level: LockLevel)? {
        let start = hash % table.count
        for probe in 0..<table.lookupProbes {
            let slot = (start + probe) % table.count
            let index = LockIndex(table.first + slot)
            let entry = table.entries + Int(slot)
            let state = pmll_load32(pmll_entry_state(entry))
            if state == PMLL_ENTRY_EMPTY { return nil }
            guard state == PMLL_ENTRY_READY else {
                throw .corruptPool(path: path, reason: "lock entry \(index.rawValue) has unknown state \(state)")
            }
            guard entry.pointee.name_length == UInt32(bytes.count) else { continue }
            let same = withUnsafeBytes(of: entry.pointee.name) { $0.prefix(bytes.count).elementsEqual(bytes) }
            guard same else { continue }
            guard entry.pointee.entry_checksum == Self.checksum(level: entry.pointee.level, name: bytes),
                  let existing = LockLevel(rawValue: entry.pointee.level) else {
                throw .corruptPool(path: path, reason: "lock entry \(index.rawValue) ('\(name)') fails its checksum")
            }
            return (index, existing)
        }
        return nil
    }

    /// Writes name, level and checksum, makes them durable, then publishes the entry with
    /// one aligned store of READY (made durable too): a torn creation stays EMPTY. Nil when
    /// no table this process knows has room (after learning what others made).
    private func insert(_ bytes: [UInt8], level: LockLevel, anywhere: Bool) throws(PMLLError) -> LockIndex? {
        let hash = bytes.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }
        if memory.lockExtents.extensionLimit > 0 { memory.lockExtents.learn() }
        for table in tables() {
            let start = hash % table.count
            // The store lock's own entry (`anywhere`) may go anywhere only where lookups search
            // the whole run.
            let probes = table.canGrow && !(anywhere && table.unbounded) ? min(Self.insertProbes, table.count) : table.count
            for probe in 0..<probes {
                let slot = (start + probe) % table.count
                let entry = table.entries + Int(slot)
                guard pmll_load32(pmll_entry_state(entry)) == PMLL_ENTRY_EMPTY else { continue }
                let state = pmll_entry_state(entry)
                // Keep the volatile word untouched: nobody can be using an EMPTY entry.
                entry.pointee.level = level.rawValue
                entry.pointee.name_length = UInt32(bytes.count)
                withUnsafeMutableBytes(of: &entry.pointee.name) { raw in
                    raw.initializeMemory(as: UInt8.self, repeating: 0)
                    raw.copyBytes(from: bytes)
                }
                entry.pointee.entry_checksum = Self.checksum(level: level.rawValue, name: bytes)
                try memory.persistence.persist(UnsafeRawPointer(entry), MemoryLayout<pmll_lock_entry_t>.size, site: "lock.entry")
                pmll_store32(state, PMLL_ENTRY_READY)
                try memory.persistence.persist(UnsafeRawPointer(state), 4, site: "lock.entry")
                return LockIndex(table.first + slot)
            }
        }
        return nil
    }
}
