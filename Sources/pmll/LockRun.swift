import PMLL
#if canImport(Glibc)
import Glibc
#endif

/// Running `pmll lock`, however its arguments were parsed (``LockCommand`` or ``FastPath``):
/// take lock NAME, run COMMAND as our child, release, and return COMMAND's status.
struct LockRun {
    var pool: PoolChoice
    var name: String
    var level: LockLevel?
    var shared = false
    var timeout: Double?
    var command: [String]

    /// The pool is released before this returns (its process slot freed; with scheduled checks
    /// configured, when they stop), so that the next process to open it finds nothing of ours
    /// to clean up.
    func run() throws -> Int32 {
        let label = command.first.map { $0.split(separator: "/").last.map(String.init) ?? $0 }
        let pool = try self.pool.openLongRunning(label: label, exitsAfter: true)
        let lock = try pool.lock(named: name, level: try resolvedLevel(pool))
        try NestedLocks.check(lock.id, pool: pool)
        return try CommandHold.run(lock, shared: shared, timeout: Timeout.duration(timeout)) { grant in
            grant.recordHoldStart()
            var environment = NestedLocks.environment(adding: lock.id)
            if let death = grant.previousOwnerDeath {
                printError("pmll: warning: lock '\(name)': \(death); running COMMAND with PMLL_PREVIOUS_OWNER_DIED=1")
                environment.append("PMLL_PREVIOUS_OWNER_DIED=1")
            }
            let result = try ChildProcess.run(command, environment: environment)
            if case .signaled = result { grant.markInconsistent() }
            return result.exitStatus
        }
    }

    private func resolvedLevel(_ pool: Pool) throws(PMLLError) -> LockLevel {
        if let level { return level }
        return try pool.existingLock(named: name)?.id.level ?? .package
    }
}
