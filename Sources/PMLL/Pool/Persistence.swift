import CPMLL

/// Every durable write of the pool goes through here, so that the barrier used matches
/// the mapping (cache flush on real pmem, msync elsewhere) and can be counted.
struct Persistence: Sendable {
    /// Durable barriers this process has made (for benchmarks and diagnostics).
    static var barrierCount: UInt64 { pmll_barrier_count() }

    let isPmem: Bool

    func persist(_ address: UnsafeRawPointer, _ length: Int) throws(PMLLError) {
        if isPmem {
            pmll_pmem_persist(address, length)
        } else {
            _ = try SystemCall.retrying("pmem_msync") { pmll_pmem_msync(address, length) }
        }
    }
}
