import CPMLL
package import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The one place where a C helper's `-errno` result becomes a typed error.
/// EINTR is retried here, except for waits whose callers must re-check state.
package enum SystemCall {
    /// Runs `body` (which returns `-errno` on failure) until it does not fail with EINTR.
    @inline(__always)
    package static func retrying(_ name: StaticString, _ body: () -> Int32) throws(PMLLError) -> Int32 {
        while true {
            let rc = body()
            if rc >= 0 { return rc }
            if rc == -EINTR { continue }
            throw .systemCall(name: "\(name)", errno: Errno(rawValue: -rc))
        }
    }

    /// Throws for a `-errno` result that was already obtained (calls that must not be
    /// retried blindly, such as a non-blocking lock attempt whose EAGAIN the caller handled).
    @inline(__always)
    package static func check(_ name: StaticString, _ rc: Int32) throws(PMLLError) {
        if rc < 0 { throw .systemCall(name: "\(name)", errno: Errno(rawValue: -rc)) }
    }

    /// Runs a libc call that returns -1 and sets `errno`, retrying EINTR.
    @inline(__always)
    package static func libc(_ name: StaticString, _ body: () -> Int32) throws(PMLLError) -> Int32 {
        while true {
            let rc = body()
            if rc != -1 { return rc }
            let e = Errno.current
            if e == .interrupted { continue }
            throw .systemCall(name: "\(name)", errno: e)
        }
    }

    /// Maps the errno of a failed file operation to the error a user can act on.
    package static func fileError(_ errno: Errno, path: String, operation: String) -> PMLLError {
        switch errno {
        case .permissionDenied, .notPermitted:
            .permissionDenied(path: path, operation: operation)
        case .readOnlyFileSystem:
            // Not a permission a user could change: say what it is (issue 16).
            .invalidPoolPath(path: path, reason: "on a read-only file system")
        case .noSuchFileOrDirectory:
            .poolNotFound(path: path)
        case .notDirectory, .fileNameTooLong, .isDirectory, .tooManySymbolicLinkLevels:
            .invalidPoolPath(path: path, reason: errno.description)
        default:
            .systemCall(name: operation, errno: errno)
        }
    }
}

extension Errno {
    package static var current: Errno { Errno(rawValue: errno) }

    /// The errno of a failed swift-system call (which throws untyped, always an Errno).
    package init(_ error: any Error) {
        self = (error as? Errno) ?? .ioError
    }
}
