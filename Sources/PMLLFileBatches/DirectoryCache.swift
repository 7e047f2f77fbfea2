package import PMLLCore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Directory descriptors below a root, opened one component at a time without following
/// symlinks, cached for the batch.
package final class DirectoryCache {
    package let root: Int32
    private var cache: [String: Int32] = [:]

    package init(root: Int32) { self.root = root }

    package func directory(_ components: [String], index: Int) throws(PMLLError) -> Int32 {
        if components.isEmpty { return root }
        let key = components.joined(separator: "/")
        if let fd = cache[key] { return fd }
        let parent = try directory(Array(components.dropLast()), index: index)
        let fd = openat(parent, components.last!, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno.current
            if e == .tooManySymbolicLinkLevels || e == .notDirectory {
                throw .invalidBatch(index: index, reason: "'\(key)' is not a directory below the root (symlinks are not followed)")
            }
            throw .batchFailed(index: index, path: key, errno: e)
        }
        cache[key] = fd
        return fd
    }

    /// What `path` itself is (not followed), or nil if nothing is there.
    package func entry(_ path: String) -> ExistingEntry? {
        let (parent, name) = PathGuard.split(path)
        guard let fd = try? directory(parent, index: 0), let st = status(fd, name) else { return nil }
        return ExistingEntry(isDirectory: st.st_mode & S_IFMT == S_IFDIR, inode: UInt64(st.st_ino))
    }

    func status(_ fd: Int32, _ name: String) -> stat? {
        var st = stat()
        return fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
    }

    package func existsAt(_ fd: Int32, _ name: String) -> Bool { status(fd, name) != nil }

    package func inode(_ fd: Int32, _ name: String) -> UInt64? { status(fd, name).map { UInt64($0.st_ino) } }

    /// Both names are links to one file.
    package func sameFile(_ fd: Int32, _ a: String, _ b: String) -> Bool {
        guard let sa = status(fd, a), let sb = status(fd, b) else { return false }
        return sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev
    }

    package func closeAll() {
        cache.values.forEach { close($0) }
        cache.removeAll()
    }
}
