import CPMLL
import Foundation
import Histogram

/// A small file mapped MAP_SHARED, for the peer mutex and for counters shared between
/// benchmark processes.
final class SharedFile: @unchecked Sendable {
    let path: String
    let fd: Int32
    let base: UnsafeMutableRawPointer
    let size: Int

    init(_ path: String, size: Int = 1 << 16, create: Bool) throws {
        self.path = path
        self.size = size
        fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0o600)
        guard fd >= 0 else { throw BenchError("open \(path): \(String(cString: strerror(errno)))") }
        if create { ftruncate(fd, off_t(size)) }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw BenchError("mmap \(path)")
        }
        base = p
    }

    deinit {
        munmap(base, size)
        close(fd)
    }

    /// 64-bit counters after the first cache lines (the mutex and flags live before them).
    func counter(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + 512 + i * 64).assumingMemoryBound(to: UInt64.self)
    }

    var startFlag: UnsafeMutablePointer<UInt32> { (base + 256).assumingMemoryBound(to: UInt32.self) }
    var stopFlag: UnsafeMutablePointer<UInt32> { (base + 260).assumingMemoryBound(to: UInt32.self) }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Spawns this executable with a subcommand; stdout is a pipe read line by line.
final class BenchChild {
    let process = Process()
    private let pipe = Pipe()
    private var buffer = Data()

    init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        process.standardOutput = pipe
        try process.run()
    }

    /// Blocks until a whole line arrives (nil at EOF).
    func readLine() -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            let data = pipe.fileHandleForReading.availableData
            if data.isEmpty { return nil }
            buffer.append(data)
        }
    }

    var pid: Int32 { process.processIdentifier }
}

func sayLine(_ text: String) {
    let line = text + "\n"
    _ = line.withCString { write(1, $0, strlen($0)) }
}

/// Starts benchmark children that print "ready", releases them together through the shared
/// start flag, and gathers what each prints at the end: a count (e.g. barriers) then
/// latencies in ns. Returns the elapsed time, all latencies in one histogram, and the sum.
func runChildren(_ arguments: [[String]], shared: SharedFile) throws -> (seconds: Double, histogram: Histogram<UInt64>, count: UInt64) {
    let children = try arguments.map { try BenchChild($0) }
    for child in children { _ = child.readLine() }
    let start = monotonicNanoseconds()
    pmll_store32(shared.startFlag, 1)
    var histogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
    var count: UInt64 = 0
    for child in children {
        guard let line = child.readLine() else { throw BenchError("a benchmark child failed") }
        let fields = line.split(separator: " ").compactMap { UInt64($0) }
        count += fields.first ?? 0
        for latency in fields.dropFirst() { _ = histogram.record(latency) }
        child.process.waitUntilExit()
    }
    return (Double(monotonicNanoseconds() - start) / 1e9, histogram, count)
}
