#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PMLL

struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Print every statistic of the pool in the Prometheus text format.",
        discussion: """
            With --textfile DIR, writes DIR/pmll.prom atomically instead (for node_exporter's \
            textfile collector; run it from cron or a timer). Docs/CLI.md lists the metrics.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments

    @Option(help: ArgumentHelp("Write DIR/pmll.prom (atomically: a temporary file renamed into place).", valueName: "DIR"))
    var textfile: String?

    func run() throws {
        let pool = try poolArguments.open(create: false)
        let text = PoolMetrics.exposition(of: pool.status(includingSelf: false))
        guard let textfile else {
            print(text, terminator: "")
            return
        }
        try TextFile.replace(textfile + "/pmll.prom", with: text)
    }
}

/// Writing a file so that readers see the old content or the new, never a part.
enum TextFile {
    static func replace(_ path: String, with text: String) throws {
        let temporary = path + ".tmp.\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw failure("cannot create", temporary) }
        var ok = text.utf8.withContiguousStorageIfAvailable { bytes -> Bool in
            var done = 0
            while done < bytes.count {
                let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return false }
                done += n
            }
            return true
        } ?? false
        ok = ok && fsync(fd) == 0
        let saved = errno
        close(fd)
        guard ok else {
            unlink(temporary)
            errno = saved
            throw failure("cannot write", temporary)
        }
        guard rename(temporary, path) == 0 else {
            let saved = errno
            unlink(temporary)
            errno = saved
            throw failure("cannot rename into", path)
        }
    }

    private static func failure(_ what: String, _ path: String) -> CommandFailure {
        let code = errno
        let status = code == EACCES || code == EPERM || code == EROFS ? ExitStatus.permission : code == ENOENT || code == ENOTDIR ? ExitStatus.noPool : ExitStatus.system
        return CommandFailure(message: "\(what) '\(path)': \(String(cString: strerror(code)))", status: status)
    }
}
