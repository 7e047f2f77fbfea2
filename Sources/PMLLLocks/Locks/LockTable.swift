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

    /// Finds the entry for `name`, creating it if `create` is set.
    package func index(of name: String, level: LockLevel, create: Bool, creation: borrowing Mutex<Void>, allowReserved: Bool = false) throws(PMLLError) -> LockIndex? {
        try Self.validate(name: name, allowReserved: allowReserved)
        if let found = try find(Array(name.utf8), name: name) { return try checked(found, name: name, level: level) }
        let bytes = Array(name.utf8)
        guard create else { return nil }
        return try creation.withLock { _ throws(PMLLError) -> LockIndex in
            try TableCreationLock.withHeld(fd: fd) { () throws(PMLLError) -> LockIndex in
            if let found = try find(bytes, name: name) { return try checked(found, name: name, level: level) }
            return try insert(bytes, level: level)
            }
        }
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

    private func find(_ bytes: [UInt8], name: String) throws(PMLLError) -> (index: LockIndex, level: LockLevel)? {
        let capacity = memory.lockCapacity
        let start = bytes.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) } % capacity
        for probe in 0..<capacity {
            let index = LockIndex((start + probe) % capacity)
            let entry = memory.lock(index)
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
    /// one aligned store of READY (made durable too): a torn creation stays EMPTY.
    private func insert(_ bytes: [UInt8], level: LockLevel) throws(PMLLError) -> LockIndex {
        let capacity = memory.lockCapacity
        let start = bytes.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) } % capacity
        for probe in 0..<capacity {
            let index = LockIndex((start + probe) % capacity)
            let entry = memory.lock(index)
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
            return index
        }
        throw .poolFull(table: "lock", capacity: Int(capacity))
    }
}
