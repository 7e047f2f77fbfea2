import ArgumentParser
import Foundation
import PMLLCore
import PMLLEtcd
import PMLLLocks

struct EtcdLockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lock",
        abstract: "Run COMMAND while holding lock NAME of an etcd pool.",
        discussion: """
            COMMAND gets PMLL_FENCING_TOKEN (the acquisition's token, strictly increasing) and \
            PMLL_LOCK; `pmll state set --fence NAME=$PMLL_FENCING_TOKEN ...` commits only while \
            that acquisition still holds the lock. If the previous holder died holding the lock \
            (its lease expired), a warning is printed and COMMAND gets PMLL_PREVIOUS_OWNER_DIED=1. \
            If the lock is lost while COMMAND runs (this process paused or cut off past the TTL), \
            pmll says so and exits 75 after COMMAND.

            \(EtcdExit.summary)
            """
    )

    @OptionGroup var poolArguments: EtcdPoolArguments

    @Option(parsing: .unconditional, help: ArgumentHelp("Give up after this many seconds (exit 75). Default: wait forever.", valueName: "SECONDS"))
    var timeout: Double?

    @Option(help: "Hierarchy level: registry, package, filesystem or network (default: package).")
    var level: LockLevel = .package

    @Flag(name: .long, help: "Hold the lock shared, with other --shared holders (default: exclusive). A queued exclusive holder keeps later shared holders out.")
    var shared = false

    @Flag(name: .long, help: "Hold the lock exclusive (the default).")
    var exclusive = false

    @Argument(help: "Lock name: 1-255 bytes of UTF-8, no NUL.")
    var name: String

    @Argument(parsing: .postTerminator, help: "The command to run while holding the lock, after --.")
    var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("missing COMMAND after --") }
        if shared && exclusive { throw ValidationError("--shared and --exclusive exclude each other") }
        if let timeout, !(timeout >= 0 && timeout.isFinite) { throw ValidationError("--timeout must be a number of seconds, 0 or more") }
    }

    func run() async throws {
        let pool = try await poolArguments.open()
        let lock = try await pool.lock(named: name, level: level)
        let notice = EtcdWaitNotice.lock(pool, name)
        let outcome = await runInterruptibly(closing: pool) {
            defer { notice.stop() }
            let body = { (grant: inout EtcdLockGrant) async throws -> Int32 in
                notice.stop()
                var environment = ProcessInfo.processInfo.environment
                environment["PMLL_FENCING_TOKEN"] = String(grant.fencingToken)
                environment["PMLL_LOCK"] = name
                if let pool = poolArguments.pool { environment["PMLL_POOL"] = pool }
                if let death = grant.previousOwnerDeath {
                    FileHandle.standardError.write(Data("pmll: warning: lock '\(name)': \(death); running COMMAND with PMLL_PREVIOUS_OWNER_DIED=1\n".utf8))
                    environment["PMLL_PREVIOUS_OWNER_DIED"] = "1"
                }
                let result = try await ChildProcess.run(command, environment: environment)
                if result.signaled { grant.markInconsistent() }
                return result.status
            }
            let wait: Duration? = timeout.map { .nanoseconds(Int64($0 * 1e9)) }
            return shared ? try await lock.withSharedLock(timeout: wait, body) : try await lock.withLock(timeout: wait, body)
        }
        switch outcome {
        case .success(let status): Foundation.exit(status)
        case .failure(let error): throw error
        }
    }
}
