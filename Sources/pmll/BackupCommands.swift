#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PMLL

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Write a consistent copy of a live pool.",
        discussion: """
            Other processes keep working; submissions and commits wait only while the pool is \
            copied into memory (the report says how long). The copy is written beside DEST and \
            renamed into place, opened once (its volatile state reset) and checked. With --rotate, \
            DEST is a directory: the copy is named POOLNAME.YYYYMMDDTHHMMSSZ.backup and only the \
            --keep newest such copies are kept. Docs/Operations.md.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Argument(help: "Destination file, or directory with --rotate. Default: the configuration's backup.directory, rotated.") var destination: String?
    @Flag(help: "DEST is a directory of dated backups; remove all but the --keep newest.") var rotate = false
    @Option(help: "Backups to keep with --rotate (default: the configuration's backup.keep, 7).") var keep: Int?
    @Option(help: ArgumentHelp("Give up if submissions and commits cannot be held off within this many seconds.", valueName: "SECONDS")) var timeout: Double = 30
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        if let keep, keep < 1 { throw ValidationError("--keep must be at least 1") }
        guard timeout >= 0, timeout.isFinite else { throw ValidationError("--timeout must be a number of seconds") }
    }

    func run() throws {
        let configuration = try poolArguments.configuration()
        let rotate = self.rotate || destination == nil
        guard let destination = destination ?? configuration.backupDirectory else {
            throw CommandFailure(message: "no DEST given and no backup.directory configured (pmll config show)", status: ExitStatus.usage)
        }
        let keep = self.keep ?? configuration.backupKeep
        let pool = try poolArguments.open(create: false)
        let wait = Duration.milliseconds(Int64(timeout * 1000))
        let (report, removed) = rotate ? try pool.backup(rotatingIn: destination, keep: keep, timeout: wait) : (try pool.backup(to: destination, timeout: wait), [])
        if json {
            try printJSON(BackupSummary(report: report, removed: removed))
        } else {
            print("backup of \(report.source) written to \(report.destination): \(report.bytes / 1024) KiB; submissions and commits held off \((Double(report.writersBlockedNanoseconds) / 1e6).fixed(2)) ms"
                  + (report.fileBatchesDropped > 0 ? "; \(report.fileBatchesDropped) file batch(es) in progress left out" : "")
                  + (removed.isEmpty ? "" : "; removed \(removed.count) older backup(s)"))
        }
    }

    struct BackupSummary: Encodable {
        let report: BackupReport
        let removed: [String]
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Replace a pool with a backup, atomically.",
        discussion: """
            Refuses (exit 75) while any process has the pool open. The backup is copied beside the \
            pool, opened once and checked in full (exit 65 if it fails), then renamed over the pool; \
            processes opening the pool meanwhile wait and then open the restored one.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Argument(help: "The backup (a pool file).") var source: String
    @Flag(help: "Print the report as JSON.") var json = false

    func run() throws {
        let report = try Pool.restore(from: source, to: poolArguments.path())
        if json {
            try printJSON(report)
        } else {
            print("restored \(report.pool) from \(report.source) (\(report.bytes / 1024) KiB)")
        }
    }
}
