#if canImport(Glibc)
import Glibc
#endif

/// FILE of `pmll flock`: opened (created if missing) as flock(1) opens it, and the name of
/// the lock of its canonical path. Shared by both backends, so that `pmll flock ./x` and
/// `pmll flock /abs/x` contend on either.
public enum FlockFile {
    public struct Failure: Error {
        public let message: String
        /// flock(1)'s status for it: 66, or 71 out of memory or descriptors, 73 read-only or full.
        public let status: Int32
    }

    /// Creates FILE if missing (a directory is opened read-only) and returns its canonical path.
    public static func canonicalPath(_ file: String, show: (String) -> String) throws(Failure) -> String {
        var fd = open(file, O_RDONLY | O_NOCTTY | O_CREAT | O_CLOEXEC, 0o666)
        if fd < 0 && errno == EISDIR { fd = open(file, O_RDONLY | O_NOCTTY | O_CLOEXEC) }
        guard fd >= 0 else {
            let e = errno
            let status: Int32 = e == ENOMEM || e == EMFILE || e == ENFILE ? 71 : e == EROFS || e == ENOSPC ? 73 : 66
            throw Failure(message: "cannot open lock file \(show(file)): \(String(cString: strerror(e)))", status: status)
        }
        defer { close(fd) }
        guard let real = realpath(file, nil) else {
            throw Failure(message: "cannot resolve \(show(file)): \(String(cString: strerror(errno)))", status: 66)
        }
        defer { free(real) }
        return String(cString: real)
    }

    /// The lock of a canonical path: the path itself when it is a valid name, else (longer
    /// than 255 bytes, or not UTF-8) its tail with a digest of the whole path.
    public static func lockName(_ path: String) -> String {
        let bytes = Array(path.utf8)
        if bytes.count <= 255, String(validating: bytes, as: UTF8.self) != nil, !bytes.contains(0) { return path }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 }
        let tail = String(decoding: bytes.suffix(200), as: UTF8.self)
        return "…" + tail + "#" + String(hash, radix: 16)
    }
}
