import CPMLL
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The pool file's mapping: a reserved address range as large as the pool may grow (its size
/// limit), the file mapped at its start. When the file grows (the state store appends an
/// area), every process maps the new part in place when it first needs it, so the base never
/// moves and no reader ever sees a torn or moved mapping (the idea of libmdbx's dynamic
/// geometry). The mapping never shrinks while the pool is open.
package final class PoolMapping: @unchecked Sendable {
    package let base: UnsafeMutableRawPointer
    /// Bytes of address space reserved: the mapping can grow up to this.
    package let reserved: Int
    package let writable: Bool
    /// MAP_SYNC (DAX), decided once when the file was first mapped.
    private let synchronous: Bool
    /// The pool file, borrowed from the pool (open for the pool's whole life).
    private let fd: Int32
    private let path: String
    private let mapped: Atomic<Int>
    private let extending = Mutex<Void>(())
    /// False once a failed extension may have let another thread's mapping into the
    /// reservation: closing then leaves the reservation (address space only) to the process's
    /// exit rather than unmap memory that is not the pool's.
    private let reservationIntact = Atomic<Bool>(true)

    package init(base: UnsafeMutableRawPointer, length: Int, reserved: Int, writable: Bool, synchronous: Bool, fd: Int32, path: String) {
        self.base = base
        self.reserved = reserved
        self.writable = writable
        self.synchronous = synchronous
        self.fd = fd
        self.path = path
        // mmap maps whole pages: the last partial page is mapped already.
        mapped = Atomic(PoolLayout.roundUp(length))
    }

    /// Bytes of the file mapped now.
    package var length: Int { mapped.load(ordering: .acquiring) }

    /// Maps the file up to `end` (page aligned) if it is not yet. Throws if the file is
    /// shorter than that (a damaged directory, or a file cut short under the pool).
    package func ensureMapped(upTo end: Int) throws(PMLLError) {
        if end <= mapped.load(ordering: .acquiring) { return }
        try extending.withLock { _ throws(PMLLError) in
            let current = mapped.load(ordering: .acquiring)
            guard end > current else { return }
            guard end <= reserved, end % PoolLayout.page == 0 else {
                throw .corruptPool(path: path, reason: "the state store names \(end) bytes of file, beyond its size limit of \(reserved)")
            }
            var st = stat()
            _ = try SystemCall.libc("fstat") { fstat(fd, &st) }
            guard Int(st.st_size) >= end else {
                throw .corruptPool(path: path, reason: "the state store names \(end) bytes of file but the file has \(st.st_size) (truncated)")
            }
            var intact: Int32 = 1
            let rc = pmll_map_extend(base, fd, UInt64(current), UInt64(end), writable ? 1 : 0, synchronous ? 1 : 0, &intact)
            if intact == 0 { reservationIntact.store(false, ordering: .relaxed) }
            guard rc == 0 else { throw SystemCall.fileError(Errno(rawValue: -rc), path: path, operation: "map the grown part of") }
            mapped.store(end, ordering: .releasing)
        }
    }

    /// Maps the pages of `range` (page aligned, mapped already) copy-on-write, or shared again
    /// as they were (`privately` false). Its one user is a read-only participant's view of a
    /// redo log a restart left unsettled: what it writes there never reaches the file.
    package func remap(_ range: Range<Int>, privately: Bool) throws(PMLLError) {
        precondition(range.lowerBound % PoolLayout.page == 0 && range.upperBound % PoolLayout.page == 0)
        guard range.upperBound <= length else { throw .corruptPool(path: path, reason: "a page at \(range.lowerBound) lies beyond the mapped file") }
        let from = UInt64(range.lowerBound), to = UInt64(range.upperBound)
        var intact: Int32 = 1
        let rc = privately ? pmll_map_private(base, fd, from, to, &intact) : pmll_map_extend(base, fd, from, to, writable ? 1 : 0, synchronous ? 1 : 0, &intact)
        guard rc != 0 else { return }
        // Linux may have unmapped the range before failing: a hole there would fault on the
        // next read, so the file's pages go back first, if they can.
        if privately, pmll_map_extend(base, fd, from, to, writable ? 1 : 0, synchronous ? 1 : 0, &intact) == 0 { intact = 1 }
        if intact == 0 { reservationIntact.store(false, ordering: .relaxed) }
        throw SystemCall.fileError(Errno(rawValue: -rc), path: path, operation: privately ? "map a private copy of part of" : "map again part of")
    }

    /// Grows the file to hold [offset, offset + length), with its blocks reserved (a write
    /// through the mapping must never meet a full file system as SIGBUS) and the new size
    /// durable, then maps it.
    package func grow(offset: Int, length: Int, persistence: Persistence) throws(PMLLError) {
        try reserveBlocks(offset: offset, length: length, operation: "grow", noRoom: "to grow the pool by \(length) bytes")
        persistence.extendShadow(to: offset + length)
        try ensureMapped(upTo: offset + length)
    }

    /// Reserves the blocks of [offset, offset + length) inside the file again (an area whose
    /// blocks were given back, about to be reused), durably, before anything writes there.
    package func reserve(offset: Int, length: Int) throws(PMLLError) {
        try reserveBlocks(offset: offset, length: length, operation: "reserve", noRoom: "to reuse \(length) bytes of the pool's free space")
    }

    private func reserveBlocks(offset: Int, length: Int, operation: String, noRoom: String) throws(PMLLError) {
        let rc = pmll_file_reserve(fd, UInt64(offset), UInt64(length))
        if rc == -ENOSPC || rc == -EDQUOT { throw .noSpace(path: path, reason: "the file system has no room \(noRoom)") }
        guard rc == 0 else { throw SystemCall.fileError(Errno(rawValue: -rc), path: path, operation: operation) }
    }

    /// Gives the blocks of [offset, offset + length) back to the file system: an area nothing
    /// names any more. Best effort (a file system without holes keeps them).
    package func release(offset: Int, length: Int) {
        let rc = pmll_file_release(fd, UInt64(offset), UInt64(length))
        if rc != 0 && rc != -EOPNOTSUPP {
            Pool.logger.notice("could not give a free area's blocks back", metadata: ["path": "\(path)", "offset": "\(offset)", "errno": "\(-rc)"])
        }
    }

    /// The file's size now.
    package func fileSize() throws(PMLLError) -> Int {
        var st = stat()
        _ = try SystemCall.libc("fstat") { fstat(fd, &st) }
        return Int(st.st_size)
    }

    /// Releases the reservation (the pool is closing).
    package func unmap() {
        // This process's biased shared acquisitions of the pool's locks, before they cannot be added.
        pmll_bias_flush_range(base, UInt64(reserved))
        if reservationIntact.load(ordering: .relaxed) {
            _ = pmll_pmem_unmap(base, UInt64(reserved))
        } else {
            Pool.logger.warning("pool mapping left to the process's exit: a failed extension may have let another mapping into its reserved range", metadata: ["path": "\(path)"])
        }
    }
}
