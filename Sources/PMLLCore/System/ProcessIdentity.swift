import CPMLL
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Facts about the calling process and the running kernel instance, read from /proc.
package enum ProcessIdentity {
    /// getpid(2), under a name that types with their own `pid` members can call.
    package static var pid: Int32 { getpid() }
    /// geteuid(2): the user whose pools this process creates and may open.
    package static var effectiveUID: UInt32 { UInt32(geteuid()) }

    /// The command name (/proc/self/comm), at most 15 bytes.
    package static func commandName(pid: String = "self") -> String {
        guard let text = readSmallFile("/proc/\(pid)/comm") else { return "?" }
        return String(text.prefix { $0 != "\n" })
    }

    /// Field 22 of /proc/PID/stat: start time in clock ticks after boot. Together with the
    /// boot id it names a process instance, unlike a bare PID.
    package static func startTime(pid: String = "self") -> UInt64 {
        // Bytes and the C parser the exit check uses: splitting the text into substrings was
        // 2 % of a `pmll lock` process.
        var buffer = [UInt8](repeating: 0, count: 1024)
        let total = readSmallFile("/proc/\(pid)/stat", into: &buffer)
        guard total > 0, total < buffer.count else { return 0 }
        buffer[total] = 0
        var state: CChar = 0, flags: UInt64 = 0, start: UInt64 = 0
        let parsed = buffer.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { pmll_proc_stat_parse($0.baseAddress!, &state, &flags, &start) }
        }
        return parsed == 0 ? start : 0
    }

    /// /proc/sys/kernel/random/boot_id: changes on every boot. `PMLL_BOOT_ID_FILE` points
    /// elsewhere for tests that simulate a reboot.
    package static func bootID() -> String {
        let path = Knob.bootIDFile.value ?? "/proc/sys/kernel/random/boot_id"
        let text = readSmallFile(path) ?? "unknown"
        return String(text.prefix { $0 != "\n" }.prefix(39))
    }

    package static func readSmallFile(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 1024)
        let total = readSmallFile(path, into: &buffer)
        guard total >= 0 else { return nil }
        return String(decoding: buffer[..<total], as: UTF8.self)
    }

    /// Reads up to `buffer.count` bytes of `path`; -1 if it cannot be opened.
    static func readSmallFile(_ path: String, into buffer: inout [UInt8]) -> Int {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        defer { close(fd) }
        var total = 0
        while total < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + total, $0.count - total) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            total += n
        }
        return total
    }
}
