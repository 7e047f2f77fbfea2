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
        guard let stat = readSmallFile("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")") else { return 0 }
        // The command name may contain spaces and parentheses: count fields after the last ')'.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After ')' come field 3 (state) onwards; start time is field 22.
        guard fields.count > 19, let value = UInt64(fields[19]) else { return 0 }
        return value
    }

    /// /proc/sys/kernel/random/boot_id: changes on every boot. `PMLL_BOOT_ID_FILE` points
    /// elsewhere for tests that simulate a reboot.
    package static func bootID() -> String {
        let path = Knob.bootIDFile.value ?? "/proc/sys/kernel/random/boot_id"
        let text = readSmallFile(path) ?? "unknown"
        return String(text.prefix { $0 != "\n" }.prefix(39))
    }

    package static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        var total = 0
        while total < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + total, $0.count - total) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            total += n
        }
        return String(decoding: buffer[..<total], as: UTF8.self)
    }
}
