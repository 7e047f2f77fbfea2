#if canImport(Glibc)
import Glibc
#endif
import PMLLCore
import PMLLLocks
import PMLLStore

/// Frees the old files of committed batches off the caller's path.
///
/// Freeing an inode (truncating it, returning its blocks and the inode itself) is the slow
/// part of removing a backup, an order of magnitude more than removing the names while each
/// file is still open (Docs/FileBatches.md has the figures). So staging
/// keeps an `O_PATH` descriptor of each old file it backs up; the cleanup removes the names
/// (the tree is then exactly the new one) and hands the descriptors here, and closing them on
/// the library's I/O threads frees the inodes. If the process exits first, the kernel closes them;
/// after a power failure the filesystem's orphan recovery frees them at mount.
package enum InodeRelease {
    /// At most this many descriptors held per batch (the rest are freed on removal):
    /// a quarter of the soft descriptor limit, and never more than 1024.
    package static let limit: Int = {
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return 0 }
        return Int(min(UInt64(rl.rlim_cur) / 4, 1024))
    }()

    /// Closes `fds` (negative entries are skipped) on the library's I/O threads, without
    /// waiting for them.
    package static func release(_ fds: [Int32]) {
        let fds = fds.filter { $0 >= 0 }
        guard !fds.isEmpty else { return }
        _ = IOThreadPool.shared.start(1) { _ in fds.forEach { close($0) } }
    }
}
