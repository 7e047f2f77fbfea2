import PMLL
import PMLLFlockOptions
#if canImport(Glibc)
import Glibc
#endif

/// Running a parsed `pmll flock`: open (create) FILE, take the lock of its canonical path,
/// run COMMAND as our child (or exec it with -F) and exit as flock(1) would.
struct FlockRun {
    let options: FlockOptions

    func run() throws -> Int32 {
        let path = try openFile()
        let label = options.command.first.map { options.shellCommand ? "sh" : ($0.split(separator: "/").last.map(String.init) ?? $0) }
        if options.unlock {
            // flock -u FILE COMMAND unlocks a descriptor that holds nothing, then runs COMMAND.
            return try execute(environment: NestedLocks.environment(adding: nil), lock: nil).status
        }
        // $PMLL_POOL, else the configuration's pool.path ($PMLL_CONFIG or the usual files), else the default.
        let configuration = try Configuration.load()
        var poolOptions = configuration.poolOptions
        poolOptions.processLabel = label
        poolOptions.unmapsAtClose = false   // the process exits after this run
        let pool = try Pool.open(path: configuration.poolPath, options: poolOptions)
        try BackgroundChecks.start(pool, configuration)
        let lock = try pool.lock(named: Self.lockName(path), level: .filesystem)

        let started = Clock.monotonicNanoseconds
        let timeout: Duration? = options.nonblock || options.timeout == 0 ? .zero : options.timeout.map { .nanoseconds(Int64($0 * 1e9)) }
        do {
            return try CommandHold.run(lock, shared: options.shared, timeout: timeout) { grant in
                grant.recordHoldStart()
                if options.verbose {
                    let took = Clock.monotonicNanoseconds - started
                    let micros = String(took % 1_000_000_000 / 1000)
                    print("pmll: getting lock took \(took / 1_000_000_000).\(String(repeating: "0", count: 6 - micros.count) + micros) seconds")
                }
                var environment = NestedLocks.environment(adding: nil)
                if let death = grant.previousOwnerDeath {
                    printError("pmll: warning: lock '\(lock.id.name)': \(death); running COMMAND with PMLL_PREVIOUS_OWNER_DIED=1")
                    environment.append("PMLL_PREVIOUS_OWNER_DIED=1")
                }
                let (status, signaled) = try execute(environment: environment, lock: lock)
                // As `pmll lock`: COMMAND killed by a signal leaves the lock marked for the next holder.
                if signaled { grant.markInconsistent() }
                return status
            }
        } catch PMLLError.timeout(_, let holder) {
            let who = holder.map { " (held by \($0))" } ?? ""
            if options.nonblock || options.timeout == 0 {
                if options.verbose { printError("pmll: failed to get lock\(who)") }
            } else {
                printError("pmll: timeout while waiting to get lock\(who)")
            }
            return options.conflictExitCode
        }
    }

    private func openFile() throws -> String {
        do { return try FlockFile.canonicalPath(options.file, show: visible) } catch {
            throw CommandFailure(message: error.message, status: error.status)
        }
    }

    static func lockName(_ path: String) -> String { FlockFile.lockName(path) }

    /// Runs COMMAND as our child (or in our place with -F) and returns flock's status for it.
    private func execute(environment: [String], lock: LockHandle?) throws -> (status: Int32, signaled: Bool) {
        if options.verbose { print("pmll: executing \(options.command[0])") }
        if options.noFork {
            try lock?.keepAcrossExec()
            fflush(nil)
            ChildProcess.exec(options.command, environment: environment)
            printError("pmll: failed to execute \(visible(options.command[0])): \(String(cString: strerror(errno)))")
            return (69, false)
        }
        fflush(nil)
        let result: ChildProcess.Result
        do {
            result = try ChildProcess.run(options.command, environment: environment)
        } catch {
            guard error.status == 126 || error.status == 127 else { throw error }
            printError("pmll: failed to execute \(visible(options.command[0])): \(ChildProcess.reason(error))")
            return (69, false)   // flock(1): EX_UNAVAILABLE
        }
        if case .signaled = result { return (result.exitStatus, true) }
        return (result.exitStatus, false)
    }
}
