import CPMLL
package import SystemPackage

/// The TABLE byte lock: serialises creation of lock and queue entries across processes
/// (the kernel drops it if the holder dies). Callers also hold the pool's in-process mutex,
/// because OFD locks do not exclude threads that share a descriptor.
package enum TableCreationLock {
    package static func withHeld<R>(fd: FileDescriptor, _ body: () throws(PMLLError) -> R) throws(PMLLError) -> R {
        _ = try SystemCall.retrying("fcntl(F_OFD_SETLKW)") { pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_TABLE, PMLL_RANGE_EXCLUSIVE, 1) }
        defer { _ = pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_TABLE, PMLL_RANGE_UNLOCK, 0) }
        return try body()
    }
}
