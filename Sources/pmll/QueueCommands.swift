#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FoundationEssentials
import PMLL

struct QueueCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "Run commands as operations of a hardened queue, and inspect queues.",
        subcommands: [QueueExecCommand.self, QueueShowCommand.self]
    )
}

struct QueueExecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Run COMMAND as one operation of queue NAME (FIFO across processes).",
        discussion: """
            Waits for every operation submitted to NAME before this one, anywhere, then runs COMMAND \
            and exits with its status. The operation is recorded in the pool with kind "exec" and \
            COMMAND's argv (a JSON array, at most 1024 bytes) as its payload; a non-zero status or \
            a signal marks it failed. If this pmll process dies meanwhile, the operation is \
            abandoned and listed by `pmll recover`.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Option(parsing: .unconditional, help: ArgumentHelp("Give up waiting for the turn after this many seconds (exit 75). Default: the configuration's queue.timeout_ms if set, else wait forever.", valueName: "SECONDS"))
    var timeout: Double?
    @Argument(help: "Queue name: 1-244 bytes of UTF-8, no NUL.") var name: String
    @Argument(parsing: .postTerminator, help: "The command to run, after --.") var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("missing COMMAND after --") }
        try Timeout.validate(timeout)
    }

    func run() async throws {
        var release = PoolRelease()
        let status = try await execute(&release)
        BackgroundChecks.finish()
        await release.wait()
        Glibc.exit(status)
    }

    /// The operation, from opening the pool to COMMAND's status. The pool must be released
    /// (its process slot freed) before `run` exits: otherwise the next process to open the
    /// pool finds a dead process's slot to free and audit.
    private func execute(_ release: inout PoolRelease) async throws -> Int32 {
        let label = command[0].split(separator: "/").last.map(String.init) ?? command[0]
        let pool = try poolArguments.openLongRunning(label: label)
        release.pool = pool
        let queue = try pool.queue(named: name)
        let payload = try JSONEncoder().encode(command)
        // --timeout, else the configuration's queue.timeout_ms if one was given, else forever.
        let configured = try poolArguments.configuration()
        let wait = timeout != nil || configured.source(of: "queue.timeout_ms") == .defaultValue ? Timeout.duration(timeout) : configured.queue.timeout
        let interrupt = Task {
            for await _ in SignalStream(SIGINT) { return }
        }
        // As `pmll lock` names the holder: after half a second of waiting, then every 10 s.
        // Weakly: the timer's handler is let go on a Dispatch thread some time after the
        // timer is cancelled, and it must not hold the pool then.
        let queueName = name
        let notice = WaitNotice { [weak pool] in
            guard let pool, let queue = try? pool.queue(named: queueName) else { return }
            QueueWaitReport.print(queue: queue, name: queueName)
        }
        let work = Task {
            try await queue.execute(kind: "exec", payload: Array(payload), timeout: .some(wait), retry: RetryPolicy(maxRetries: 0)) { _ in
                notice.stop()
                interrupt.cancel()
                let result = try ChildProcess.run(command, environment: NestedLocks.environment(adding: nil))
                if case .signaled(let signal) = result { throw CommandEnded(status: result.exitStatus, reason: "killed by signal \(signal)") }
                if result.exitStatus != 0 { throw CommandEnded(status: result.exitStatus, reason: "exited with status \(result.exitStatus)") }
                return result.exitStatus
            }
        }
        Task { await interrupt.value; work.cancel() }
        defer { notice.stop() }
        do {
            return try await work.value
        } catch let ended as CommandEnded {
            return ended.status
        }
    }
}

/// The pool of a command that exits when it is done, held weakly: it is released (its
/// process slot freed) when its last reference goes, and the turn's task may let go of its
/// own on another thread just after the command's work returns. Under load, 13 of 150
/// `pmll queue exec` runs exited first, and the next opener freed and audited their slots.
struct PoolRelease {
    weak var pool: Pool?

    /// Waits until the pool is released, 2 s at most.
    func wait() async {
        let deadline = ContinuousClock.now + .seconds(2)
        while pool != nil && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(1)) }
    }
}

/// COMMAND's end, recorded as the operation's error when it did not exit 0.
struct CommandEnded: Error, CustomStringConvertible {
    let status: Int32
    let reason: String
    var description: String { reason }
}

/// Signals as an async sequence (the signal is ignored while the stream is in use).
struct SignalStream: AsyncSequence {
    typealias Element = Int32
    let number: Int32
    init(_ number: Int32) { self.number = number }

    func makeAsyncIterator() -> AsyncStream<Int32>.Iterator {
        let number = self.number
        return AsyncStream<Int32> { continuation in
            let watch = SignalWatch(number) { continuation.yield(number) }
            continuation.onTermination = { _ in watch.stop() }
        }.makeAsyncIterator()
    }
}

struct QueueShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show a queue's statistics and its recent operations.",
        discussion: "\(ExitStatus.summary)"
    )

    @OptionGroup var poolArguments: PoolArguments
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Argument var name: String

    struct Output: Codable {
        let stats: QueueStats
        let records: [OperationRecord]
    }

    func run() throws {
        let pool = try poolArguments.open(create: false)
        guard try pool.queues().contains(where: { $0.name == name }) else {
            throw CommandFailure(message: "no queue named '\(name)' in \(pool.path)", status: ExitStatus.noPool)
        }
        let queue = try pool.queue(named: name, persistent: try pool.queues().first { $0.name == name }!.persistent)
        let output = Output(stats: queue.stats, records: queue.records)
        if json {
            try printJSON(output)
            return
        }
        let s = output.stats
        print("queue \(s.name)\(s.persistent ? "" : " (not persistent)"): \(s.pending) pending, \(s.completed) completed, \(s.failed) failed, \(s.retried) retried, \(s.abandoned) abandoned, \(s.recovered) recovered")
        func ms(_ ns: UInt64) -> String { (Double(ns) / 1e6).fixed(3) }
        print("wait mean \(ms(s.meanWaitNanoseconds)) ms, max \(ms(s.maxWaitNanoseconds)) ms; run mean \(ms(s.meanRunNanoseconds)) ms, max \(ms(s.maxRunNanoseconds)) ms")
        var rows = [["TICKET", "STATE", "KIND", "PID", "COMMAND", "ATTEMPTS", "RUN", "PAYLOAD / ERROR"]]
        for r in output.records {
            let run = r.finishedAtNanoseconds > r.startedAtNanoseconds && r.startedAtNanoseconds > 0
                ? (Double(r.finishedAtNanoseconds - r.startedAtNanoseconds) / 1e6).fixed(1) + "ms" : "-"
            let detail = [OperationText.payload(r), r.lastError].filter { !$0.isEmpty }.joined(separator: "  ")
            rows.append(["\(r.ticket)", r.state.rawValue + (r.recovered ? " (recovered)" : ""), r.kind, "\(r.ownerPid)", r.ownerCommand, "\(r.attempts)", run, detail])
        }
        print(TableText.render(rows))
    }
}

struct RecoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract: "Find operations abandoned by dead processes and run recovery.",
        discussion: """
            Drains each queue (operations of dead processes are marked abandoned), then handles \
            every abandoned operation not yet recovered. pmll cannot undo an arbitrary command: \
            abandoned "exec" operations are handed to --exec-handler (run with PMLL_QUEUE, \
            PMLL_TICKET and PMLL_ABANDONED_ARGV, a JSON array; exit 0 = recovered), and other \
            kinds are left for the program that registered them, unless --acknowledge marks \
            everything found as recovered. The configuration's recovery policies (recovery.default, \
            .queues, .kinds, .max_attempts: handler, retry, abandon, quarantine) decide per operation; \
            --dry-run shows what they would do. Everything found is printed. Atomic file batches of \
            dead processes are rolled back first; one whose rollback fails keeps its journal, is \
            printed as needing attention, and makes the exit status 65 until a later recovery \
            succeeds (`pmll check` lists it too).

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Option(help: ArgumentHelp("Command that repairs after an abandoned `pmll queue exec`.", valueName: "COMMAND"))
    var execHandler: String?
    @Flag(help: "Mark every abandoned operation found as recovered after printing it.")
    var acknowledge = false
    @Flag(help: "Show what recovery would do under the configured policies, and do nothing.")
    var dryRun = false
    @Flag(help: "List the operations recovery quarantined, and do nothing else.")
    var quarantined = false
    @Option(help: ArgumentHelp("Remove a quarantined operation once dealt with.", valueName: "QUEUE/TICKET"))
    var release: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let pool = try poolArguments.open(create: false)
        if quarantined {
            let list = try pool.quarantinedOperations()
            if json { try printJSON(list); return }
            if list.isEmpty { print("recover: no quarantined operations in \(pool.path)") }
            for q in list {
                let r = q.record
                print("quarantined: queue '\(r.queue)' ticket \(r.ticket) kind '\(r.kind)' of pid \(r.ownerPid) (\(r.ownerCommand)): \(q.reason) \(OperationText.payload(r))")
            }
            return
        }
        if let release {
            guard let slash = release.lastIndex(of: "/"), let ticket = UInt64(release[release.index(after: slash)...]) else {
                throw CommandFailure(message: "--release wants QUEUE/TICKET, got '\(release)'", status: ExitStatus.usage)
            }
            let queue = String(release[..<slash])
            guard try pool.releaseQuarantined(queue: queue, ticket: ticket) else {
                throw CommandFailure(message: "no quarantined operation \(ticket) of queue '\(queue)'", status: 1)
            }
            print("recover: released quarantined operation \(ticket) of queue '\(queue)'")
            return
        }
        var policies = try poolArguments.configuration().recovery
        var handlers: [String: RecoveryHandler] = [:]
        if acknowledge {
            for record in try pool.abandonedOperations() {
                handlers[record.kind] = { _ in }
                policies.byKind[record.kind] = .handler
            }
        }
        if let execHandler {
            handlers["exec"] = { record in
                let env = NestedLocks.environment(adding: nil) + [
                    "PMLL_QUEUE=\(record.queue)", "PMLL_TICKET=\(record.ticket)",
                    "PMLL_ABANDONED_ARGV=\(String(decoding: record.payload, as: UTF8.self))",
                ]
                let result = try ChildProcess.run(["/bin/sh", "-c", execHandler], environment: env)
                guard result.exitStatus == 0 else { throw CommandEnded(status: result.exitStatus, reason: "exec handler exited with status \(result.exitStatus)") }
            }
        } else if policies.action(queue: "", kind: "exec") == .retry || policies.byQueue.values.contains(.retry) {
            // Retrying a `pmll queue exec` runs its recorded command again.
            handlers["exec"] = { record in
                let argv = try JSONDecoder().decode([String].self, from: Data(record.payload))
                guard !argv.isEmpty else { throw CommandEnded(status: 1, reason: "the operation recorded no command") }
                let result = try ChildProcess.run(argv, environment: NestedLocks.environment(adding: nil))
                guard result.exitStatus == 0 else { throw CommandEnded(status: result.exitStatus, reason: "exited with status \(result.exitStatus)") }
            }
        }
        let report = try await pool.recover(handlers: handlers, policies: policies, dryRun: dryRun)
        if json {
            try printJSON(report)
            if report.needsAttention { throw ExitCode(ExitStatus.badPool) }
            return
        }
        if report.fileBatchesRolledBack > 0 { print("recover: rolled back \(report.fileBatchesRolledBack) file batch(es) of dead processes") }
        for batch in report.fileBatchesNeedingAttention { print("needs attention: \(batch)") }
        if report.items.isEmpty { print("recover: no abandoned operations in \(pool.path)") }
        for item in report.items {
            let r = item.record
            let what = "queue '\(r.queue)' ticket \(r.ticket) kind '\(r.kind)' of pid \(r.ownerPid) (\(r.ownerCommand)), \(r.lastError)"
            switch item.outcome {
            case .recovered: print("recovered: \(what) \(OperationText.payload(r))")
            case .noHandler: print("left (no handler for kind '\(r.kind)'): \(what) \(OperationText.payload(r))")
            case .handlerFailed(let error): print("handler failed (\(error)): \(what) \(OperationText.payload(r))")
            case .retried(nil): print("retried: \(what) \(OperationText.payload(r))")
            case .retried(let error?): print("retried, failed again (\(error)): \(what) \(OperationText.payload(r))")
            case .abandonedByPolicy: print("abandoned (policy): \(what) \(OperationText.payload(r))")
            case .quarantined(let reason): print("quarantined (\(reason)): \(what) \(OperationText.payload(r))")
            case .planned(let plan): print("would \(plan): \(what) \(OperationText.payload(r))")
            }
        }
        if report.needsAttention {
            printError("pmll: \(report.fileBatchesNeedingAttention.count) file batch(es) need attention (see above)")
            throw ExitCode(ExitStatus.badPool)
        }
    }
}

enum OperationText {
    /// The payload as text if it is UTF-8 (exec payloads are JSON argv), else its size.
    static func payload(_ r: OperationRecord) -> String {
        guard !r.payload.isEmpty else { return "" }
        if let text = String(validating: r.payload, as: UTF8.self), !text.contains(where: { $0.isNewline }) { return text }
        return "<\(r.payload.count) bytes>"
    }
}
