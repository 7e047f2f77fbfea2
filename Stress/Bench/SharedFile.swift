import CPMLL
import Foundation
import PMLLStressSupport
import Histogram

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
        guard let line = child.readLine() else { throw ToolError("a benchmark child failed") }
        let fields = line.split(separator: " ").compactMap { UInt64($0) }
        count += fields.first ?? 0
        for latency in fields.dropFirst() { _ = histogram.record(latency) }
        child.process.waitUntilExit()
    }
    return (Double(monotonicNanoseconds() - start) / 1e9, histogram, count)
}
