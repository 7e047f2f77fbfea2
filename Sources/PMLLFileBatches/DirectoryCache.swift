package import PMLLCore
package import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Directory descriptors below a root, opened one component at a time without following
/// symlinks, cached for the batch.
package final class DirectoryCache {
    package let root: FileDescriptor
    private var cache: [String: FileDescriptor] = [:]

    package init(root: FileDescriptor) { self.root = root }

    package func directory(_ components: [String], index: Int) throws(PMLLError) -> FileDescriptor {
        if components.isEmpty { return root }
        let key = components.joined(separator: "/")
        if let fd = cache[key] { return fd }
        let parent = try directory(Array(components.dropLast()), index: index)
        let raw = openat(parent.rawValue, components.last!, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard raw >= 0 else {
            let e = Errno.current
            if e == .tooManySymbolicLinkLevels || e == .notDirectory {
                throw .invalidBatch(index: index, reason: "'\(key)' is not a directory below the root (symlinks are not followed)")
            }
            throw .batchFailed(index: index, path: key, errno: e)
        }
        let fd = FileDescriptor(rawValue: raw)
        cache[key] = fd
        return fd
    }

    /// What `path` itself is (not followed), or nil if nothing is there.
    package func entry(_ path: String) -> ExistingEntry? {
        let (parent, name) = PathGuard.split(path)
        guard let fd = try? directory(parent, index: 0), let st = status(fd, name) else { return nil }
        return ExistingEntry(isDirectory: st.st_mode & S_IFMT == S_IFDIR, inode: UInt64(st.st_ino))
    }

    func status(_ fd: FileDescriptor, _ name: String) -> stat? {
        var st = stat()
        return fstatat(fd.rawValue, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
    }

    package func existsAt(_ fd: FileDescriptor, _ name: String) -> Bool { status(fd, name) != nil }

    package func inode(_ fd: FileDescriptor, _ name: String) -> UInt64? { status(fd, name).map { UInt64($0.st_ino) } }

    /// Both names are links to one file.
    package func sameFile(_ fd: FileDescriptor, _ a: String, _ b: String) -> Bool {
        guard let sa = status(fd, a), let sb = status(fd, b) else { return false }
        return sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev
    }

    package func closeAll() {
        cache.values.forEach { try? $0.close() }
        cache.removeAll()
    }
}
