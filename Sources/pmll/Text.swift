import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

// Small text and file helpers, so that `pmll` starts without Foundation's
// internationalisation (ICU is a 40 MiB library to map at every start: issue 23).

extension Double {
    /// The value with `digits` decimals, as `String(format: "%.Nf")` prints it in the C
    /// locale (which is what printf would give: the outputs are for people and scripts).
    func fixed(_ digits: Int) -> String {
        guard isFinite else { return isNaN ? "nan" : (self < 0 ? "-inf" : "inf") }
        var buffer = [CChar](repeating: 0, count: 64)
        let written = withVaList([self]) { vsnprintf(&buffer, buffer.count, "%.\(digits)f", $0) }
        guard written > 0 else { return "\(self)" }
        return String(decoding: buffer.prefix(Int(written)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension String {
    /// Padded with spaces on the right to `width` characters (never cut).
    func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }

    /// Without leading and trailing spaces and tabs.
    var trimmingBlanks: Substring {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isBlank($0) }), let last = lastIndex(where: { !isBlank($0) }) else { return "" }
        return self[first...last]
    }
}

enum FileIO {
    /// Every byte of `fd` until end of file (EINTR retried); nil on a read error.
    static func readAll(_ fd: Int32) -> [UInt8]? {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n == 0 { return bytes }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            bytes += chunk[..<n]
        }
    }

    /// The file's bytes, or nil if it cannot be opened or read.
    static func contents(of path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return readAll(fd)
    }

    /// Writes all of `bytes` to `fd` (short writes and EINTR retried).
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { writeAll(fd, $0) }
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += n
        }
    }
}

/// `--timeout SECONDS` of `lock` and `queue exec`.
enum Timeout {
    static func validate(_ seconds: Double?) throws {
        guard let seconds else { return }
        guard !seconds.isNaN, seconds >= 0 else { throw ValidationError("--timeout must be 0 or more seconds") }
    }

    /// nil: no limit. So is anything past what a deadline can express (2^63 ns, 292 years),
    /// instead of a trap converting it.
    static func duration(_ seconds: Double?) -> Duration? {
        guard let seconds else { return nil }
        let nanoseconds = seconds * 1e9
        return nanoseconds < 9.2e18 ? .nanoseconds(Int64(nanoseconds)) : nil
    }
}
