import ArgumentParser
import Dispatch
import PMLL
#if canImport(Glibc)
import Glibc
#endif

struct LockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lock",
        abstract: "Run COMMAND while holding lock NAME (like flock(1)).",
        discussion: """
            Waits for the lock (printing who holds it when the wait is noticeable), runs COMMAND \
            and exits with its status. If a previous holder died holding the lock, prints a \
            warning and runs COMMAND with PMLL_PREVIOUS_OWNER_DIED=1. If COMMAND is killed by a \
            signal, the lock is released marked so the next holder is told the same.
            Nested `pmll lock` calls are checked against the hierarchy through $PMLL_HELD_LOCKS.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments

    // .unconditional: "--timeout -1" reaches validate() and gets a real message.
    @Option(parsing: .unconditional, help: ArgumentHelp("Give up after this many seconds (exit 75). Default: wait forever.", valueName: "SECONDS"))
    var timeout: Double?

    @Option(help: "Hierarchy level if the lock is created: registry, package, filesystem or network. Default: the lock's existing level, else package.")
    var level: LockLevel?

    @Flag(help: ArgumentHelp("Hold the lock shared (with other --shared holders), or exclusive (the default). A waiting exclusive holder keeps new shared holders out."))
    var mode: LockMode = .exclusive

    @Argument(help: "Lock name: 1-255 bytes of UTF-8, no NUL.")
    var name: String

    @Argument(parsing: .postTerminator, help: "The command to run while holding the lock, after --.")
    var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("missing COMMAND after --") }
        try Timeout.validate(timeout)
    }

    func run() throws {
        let run = LockRun(pool: poolArguments.choice, name: name, level: level, shared: mode == .shared, timeout: timeout, command: command)
        let status = try run.run()
        BackgroundChecks.finish()
        Glibc.exit(status)
    }
}

enum LockMode: String, EnumerableFlag {
    case exclusive, shared
}

/// Nested `pmll lock` invocations: the outer one tells the inner ones what it holds.
enum NestedLocks {
    static let variable = "PMLL_HELD_LOCKS"

    static func held() -> [LockID] {
        guard let raw = getenv(variable).map({ String(cString: $0) }), !raw.isEmpty else { return [] }
        return raw.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let n = UInt32(parts[0]), let level = LockLevel(rawValue: n) else { return nil }
            return LockID(name: String(parts[1]), level: level)
        }
    }

    static func check(_ requested: LockID, pool: Pool) throws(PMLLError) {
        if let top = held().max(by: { $0.level < $1.level }), top.level >= requested.level {
            throw HeldLocks.violation(held: top, requested: requested, pool: pool)
        }
    }

    /// The current environment plus the lock now held (if any), for COMMAND.
    static func environment(adding lock: LockID?) -> [String] {
        var env: [String] = []
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if !s.hasPrefix(variable + "=") && !s.hasPrefix("PMLL_PREVIOUS_OWNER_DIED=") { env.append(s) }
            p += 1
        }
        let all = held() + (lock.map { [$0] } ?? [])
        if !all.isEmpty {
            // A loop, not `joined(separator:)`: that generic's first use in a process (its
            // metadata made from a mangled name) cost 1.5 % of a whole `pmll lock`.
            var value = variable + "="
            for i in all.indices {
                if i > 0 { value += "\n" }
                value += String(all[i].level.rawValue) + ":" + all[i].name
            }
            env.append(value)
        }
        return env
    }
}
