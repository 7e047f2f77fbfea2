import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// Every durable write of the pool goes through here, so that the barrier used matches
/// the mapping (cache flush on real pmem, msync elsewhere), can be counted, and can be
/// observed by the crash suite's power-failure model.
///
/// Test modes (environment, read once per process):
/// - `PMLL_POWER_SHADOW=FILE`: each persisted range, rounded out to 64-byte units, is also
///   copied into FILE at the same offset. FILE is then the "durable image": what survives a
///   power failure. The crash suite builds post-failure images from it.
/// - `PMLL_TEST_DROP_PERSIST=SITE`: skips the persist calls of one named site, to show that
///   the crash suite catches a missing barrier.
package struct Persistence: @unchecked Sendable {
    package let isPmem: Bool
    package let base: UnsafeMutableRawPointer?
    /// The file lives in memory only (tmpfs): a barrier has nothing to write (the kernel's
    /// msync of a tmpfs mapping does nothing but cost a system call), so none is made, except
    /// for the crash suite's models, which observe every barrier.
    package let volatileStorage: Bool

    /// Durable barriers this process has made (for benchmarks and diagnostics).
    package static var barrierCount: UInt64 { pmll_barrier_count() }

    package static let unit = 64
    private static let shadow: Int32? = {
        guard let path = Knob.powerShadow.value, !path.isEmpty else { return nil }
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        return fd >= 0 ? fd : nil
    }()
    private static let dropped: String? = Knob.testDropPersist.value

    package init(isPmem: Bool, base: UnsafeMutableRawPointer? = nil, volatileStorage: Bool = false) {
        self.isPmem = isPmem
        self.base = base
        self.volatileStorage = volatileStorage
    }

    /// True when ``persist(_:_:site:)`` does nothing: the file lives in memory only and no
    /// crash model observes the barriers. Nothing written to such a file can be torn by a
    /// power failure (none of it survives one).
    package var barriersAreSkipped: Bool {
        volatileStorage && pmll_crash_is_armed() == 0 && Self.dropped == nil && Self.shadow == nil
    }

    package func persist(_ address: UnsafeRawPointer, _ length: Int, site: StaticString = "other") throws(PMLLError) {
        if barriersAreSkipped { return }
        if let dropped = Self.dropped, dropped == "\(site)" { return }
        if isPmem {
            pmll_pmem_persist(address, length)
        } else {
            _ = try SystemCall.retrying("pmem_msync") { pmll_pmem_msync(address, length) }
        }
        if let shadow = Self.shadow, let base { Self.copyToShadow(shadow, base: base, address: address, length: length) }
    }

    /// The durable image grows with the file (a growth's new size is durable before the
    /// directory names it: ``PoolMapping/grow(offset:length:persistence:)``).
    package func extendShadow(to size: Int) {
        guard let shadow = Self.shadow else { return }
        var st = stat()
        if fstat(shadow, &st) == 0 && Int(st.st_size) < size { _ = ftruncate(shadow, off_t(size)) }
    }

    private static func copyToShadow(_ fd: Int32, base: UnsafeMutableRawPointer, address: UnsafeRawPointer, length: Int) {
        let start = (address - UnsafeRawPointer(base)) / unit * unit
        let end = ((address - UnsafeRawPointer(base)) + length + unit - 1) / unit * unit
        var done = 0
        while done < end - start {
            let n = pwrite(fd, base + start + done, end - start - done, off_t(start + done))
            if n <= 0 { return }
            done += n
        }
    }
}
