import Foundation

/// A small file mapped MAP_SHARED, for the peer mutex and for counters shared between
/// benchmark processes.
public final class SharedFile: @unchecked Sendable {
    public let path: String
    let fd: Int32
    public let base: UnsafeMutableRawPointer
    public let size: Int

    public init(_ path: String, size: Int = 1 << 16, create: Bool) throws {
        self.path = path
        self.size = size
        fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0o600)
        guard fd >= 0 else { throw ToolError("open \(path): \(String(cString: strerror(errno)))") }
        if create { ftruncate(fd, off_t(size)) }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw ToolError("mmap \(path)")
        }
        base = p
    }

    deinit {
        munmap(base, size)
        close(fd)
    }

    /// 64-bit counters after the first cache lines (the mutex and flags live before them).
    public func counter(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + 512 + i * 64).assumingMemoryBound(to: UInt64.self)
    }

    public var startFlag: UnsafeMutablePointer<UInt32> { (base + 256).assumingMemoryBound(to: UInt32.self) }
    public var stopFlag: UnsafeMutablePointer<UInt32> { (base + 260).assumingMemoryBound(to: UInt32.self) }
}


/// A failure of a stress or benchmark tool, with its message.
public struct ToolError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
