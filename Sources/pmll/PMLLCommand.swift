public import ArgumentParser
import Dispatch
import Synchronization
import Logging
public import PMLL
import PMLLCore
#if canImport(Glibc)
import Glibc
#endif

@main
struct PMLLCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmll",
        abstract: "Persistent, crash-safe locks shared by many processes.",
        discussion: """
            The pool is --pool PATH, else $PMLL_POOL, else \(PoolPath.defaultPath) \
            (created on first use, mode 0600).

            \(ExitStatus.summary)
            """,
        subcommands: [LockCommand.self, FlockCommand.self, QueueCommand.self, RecoverCommand.self, StateCommand.self, BatchCommand.self, CheckCommand.self, StatusCommand.self, MetricsCommand.self, TopCommand.self, BackupCommand.self, RestoreCommand.self, ConfigCommand.self, AuditCommand.self, PolicyCommand.self, DemoCommand.self, DemoWorkerCommand.self]
    )

    /// Every failure ends as one line on stderr starting `pmll:` and a documented status.
    ///
    /// Synchronous, so that `pmll lock` and `pmll flock` in their usual forms (``FastPath``)
    /// run before Swift concurrency starts: an async `main` first creates the main task and
    /// runs it from libdispatch's main queue, about 8 % of such a process (Docs/Benchmarks.md,
    /// "A synchronous main"). Every other command runs in a task, with the main thread parked
    /// in `dispatchMain()` as an async `main` would park it.
    static func main() {
        prepare()
        if let fast = FastPath.command(CommandLine.arguments) {
            do { try fast() } catch { failing(error) }
        }
        Task {
            do {
                LibraryLogging.bootstrapNow()   // the other commands and their dependencies may log
                var command = try parseAsRoot()
                if var asyncCommand = command as? any AsyncParsableCommand {
                    try await asyncCommand.run()
                } else {
                    try command.run()
                }
            } catch {
                failing(error)
            }
            Glibc.exit(0)
        }
        dispatchMain()
    }

    private static func prepare() {
        // Put off until the library makes a logger: `lock` and `flock` usually never do, and
        // swift-log's first use was about 5 % of such a process (issue 23, Docs/Benchmarks.md).
        LibraryLogging.deferBootstrap {
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = Logger.Level(rawValue: getenv("PMLL_LOG_LEVEL").map { String(cString: $0) } ?? "") ?? .warning
                return handler
            }
        }
        // A pool truncated under us (or storage that fails) faults in the mapping: one
        // `pmll:` line and exit 65 instead of death by SIGBUS.
        StorageFaults.exitOnFault()
        EtcdHandoff.runIfEtcdPool()
        if let index = RawArguments.firstInvalidUTF8() {
            // Two names that differ only in invalid bytes would otherwise become one lock.
            fail("argument \(index) is not valid UTF-8: lock and queue names, keys and values must be UTF-8 (give a binary value with --value-file)", status: ExitStatus.usage)
        }
    }

    /// The one place an error becomes the `pmll:` line and the exit status.
    private static func failing(_ error: any Error) -> Never {
        switch error {
        case let error as PMLLError:
            fail(error.description, status: ExitStatus.code(for: error))
        case let error as CommandFailure:
            fail(error.message, status: error.status)
        case let code as ExitCode where code != .validationFailure:
            Glibc.exit(code.rawValue)   // the command already said what it had to
        default:
            let status = exitCode(for: error)
            if status == .success || error is CleanExit { exit(withError: error) }
            let message = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            let trimmed = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
            fail("\(trimmed) (see 'pmll --help')", status: ExitStatus.usage)
        }
    }

    static func fail(_ message: String, status: Int32) -> Never {
        printError("pmll: \(message)")
        Glibc.exit(status)
    }
}

/// A failure with its own message and exit status (e.g. COMMAND not found).
struct CommandFailure: Error {
    let message: String
    let status: Int32
}

func printError(_ line: String) {
    var text = line
    if !text.hasSuffix("\n") { text += "\n" }
    _ = text.withCString { write(2, $0, strlen($0)) }
}

/// `--pool PATH`, shared by every subcommand.
struct PoolArguments: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Pool file (default: $PMLL_POOL, else the configuration's pool.path, else the per-user default pool).", valueName: "PATH"))
    var pool: String?

    @Option(name: .long, help: ArgumentHelp("Configuration file, instead of /etc/pmll/config.json and ~/.config/pmll/config.json (also $PMLL_CONFIG).", valueName: "FILE"))
    var config: String?

    @Flag(name: .long, help: "Create the pool 0660, for its owning group to share (pool.group_shared); no effect on an existing pool.")
    var groupShared = false

    /// The same choice as a plain value (no ArgumentParser), which does the work.
    var choice: PoolChoice { PoolChoice(pool: pool, config: config, groupShared: groupShared) }

    func configuration() throws(PMLLError) -> Configuration { try choice.configuration() }
    func path() throws(PMLLError) -> String? { try choice.path() }
    func open(create: Bool = true, label: String? = nil) throws(PMLLError) -> Pool { try choice.open(create: create, label: label) }
    func openForReading() throws(PMLLError) -> Pool { try choice.openForReading() }
    func openLongRunning(label: String? = nil) throws(PMLLError) -> Pool { try choice.openLongRunning(label: label) }
}

enum BackgroundChecks {
    private static let running = Mutex<[ScheduledTask]>([])

    static func start(_ pool: Pool, _ configuration: Configuration) throws(PMLLError) {
        if let interval = configuration.checkInterval {
            let checks = try pool.startScheduledChecks(every: interval)
            running.withLock { $0.append(checks) }
        }
        if let interval = configuration.backupInterval, let directory = configuration.backupDirectory {
            let backups = try pool.startScheduledBackups(every: interval, into: directory, keep: configuration.backupKeep)
            running.withLock { $0.append(backups) }
        }
    }

    /// Before the process exits: lets a check or backup in progress finish and record itself.
    static func finish() {
        for task in running.withLock({ r -> [ScheduledTask] in defer { r = [] }; return r }) { task.stop() }
    }
}

extension LockLevel: ExpressibleByArgument {
    public static var allValueStrings: [String] { allCases.map(\.description) }
    public var defaultValueDescription: String { description }
}
