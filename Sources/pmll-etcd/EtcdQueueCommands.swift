import ArgumentParser
import Foundation
import PMLLCore
import PMLLEtcd
import PMLLQueues

struct EtcdQueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "queue", abstract: "Hardened queues of an etcd pool.",
                                                    subcommands: [Exec.self, Show.self])

    struct Exec: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run COMMAND as one operation of queue NAME, after every operation submitted before it on any machine.",
            discussion: "COMMAND gets PMLL_QUEUE and PMLL_TICKET. A non-zero status or a signal marks the record failed; exit status is COMMAND's. If this process dies, the next operation (or pmll recover) marks it abandoned.")
        @OptionGroup var poolArguments: EtcdPoolArguments
        @Option(parsing: .unconditional, help: ArgumentHelp("Give up waiting for the turn after this many seconds (exit 75).", valueName: "SECONDS"))
        var timeout: Double?
        @Argument var name: String
        @Argument(parsing: .postTerminator) var command: [String] = []

        func validate() throws {
            guard !command.isEmpty else { throw ValidationError("missing COMMAND after --") }
            if let timeout, !(timeout >= 0 && timeout.isFinite) { throw ValidationError("--timeout must be a number of seconds, 0 or more") }
        }

        struct CommandFailed: Error, CustomStringConvertible {
            let status: Int32
            var description: String { "COMMAND exited with status \(status)" }
        }

        func run() async throws {
            let pool = try await poolArguments.open()
            let queue = try pool.queue(named: name)
            let payload = Array(try EtcdJSON.encoder.encode(command))
            let notice = EtcdWaitNotice.queue(queue, name)
            let outcome = await runInterruptibly(closing: pool) {
                defer { notice.stop() }
                return try await queue.execute(kind: "exec", payload: payload, timeout: timeout.map { .nanoseconds(Int64($0 * 1e9)) },
                                               retry: RetryPolicy(maxRetries: 0)) { op -> Int32 in
                    notice.stop()
                    var environment = ProcessInfo.processInfo.environment
                    environment["PMLL_QUEUE"] = name
                    environment["PMLL_TICKET"] = String(op.ticket)
                    let result = try await ChildProcess.run(command, environment: environment)
                    // Recorded failed, and COMMAND's status kept for the exit.
                    if result.status != 0 { throw CommandFailed(status: result.status) }
                    return 0
                }
            }
            switch outcome {
            case .success(let status): Foundation.exit(status)
            case .failure(let failed as CommandFailed): Foundation.exit(failed.status)
            case .failure(PMLLError.cancelled): throw PMLLError.queueCancelled(queue: name, ticket: 0)
            case .failure(let error): throw error
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The queue's records (ticket, state, kind, process, payload or error).")
        @OptionGroup var poolArguments: EtcdPoolArguments
        @Flag(help: "JSON output.") var json = false
        @Argument var name: String

        func run() async throws {
            let pool = try await poolArguments.open()
            let records: [EtcdOperationRecord], stats: QueueStats
            do {
                let queue = try pool.queue(named: name)
                (stats, records) = (try await queue.stats, try await queue.records())
            } catch {
                await pool.close()
                throw error
            }
            await pool.close()
            if json {
                struct Report: Encodable { var queue: String; var stats: QueueStats; var records: [EtcdOperationRecord] }
                FileHandle.standardOutput.write(try EtcdJSON.encoder.encode(Report(queue: name, stats: stats, records: records)) + Data("\n".utf8))
                return
            }
            let s = stats
            print("queue \(name): \(s.pending) pending, \(s.completed) completed, \(s.failed) failed, \(s.retried) retried, \(s.abandoned) abandoned, \(s.recovered) recovered; \(records.count) record(s) kept")
            func ms(_ ns: UInt64) -> String { String(format: "%.3f", Double(ns) / 1e6) }
            print("wait mean \(ms(s.meanWaitNanoseconds)) ms, max \(ms(s.maxWaitNanoseconds)) ms; run mean \(ms(s.meanRunNanoseconds)) ms, max \(ms(s.maxRunNanoseconds)) ms")
            for r in records {
                let what = r.error ?? String(decoding: r.payload, as: UTF8.self)
                let ticket = r.index.map { "\(r.ticket).\($0)" } ?? "\(r.ticket)"
                print("\(ticket)\t\(r.state.rawValue)\t\(r.kind)\tpid \(r.pid) (\(r.command) on \(r.host))\tattempts \(r.attempts ?? 1)\t\(what)")
            }
        }
    }
}

struct EtcdRecoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract: "Mark operations of dead processes abandoned and deal with them as the recovery policies say.",
        discussion: """
            exec records go to --exec-handler COMMAND, run by /bin/sh -c with PMLL_QUEUE, PMLL_TICKET and \
            PMLL_ABANDONED_ARGV; exit 0 marks the record recovered. Other kinds are listed and left, unless \
            --acknowledge marks everything found recovered. Policies (as the local recovery.* settings): \
            --policy default=ACTION, --policy queue:NAME=ACTION, --policy kind:KIND=ACTION with ACTION one of \
            handler, retry, abandon, quarantine (retry of an exec operation runs its command again). \
            Exit 65 if a handler failed.
            """)
    @OptionGroup var poolArguments: EtcdPoolArguments
    @Option(help: "Handler for abandoned `queue exec` operations.") var execHandler: String?
    @Flag(help: "Mark every abandoned operation found as recovered after printing it.") var acknowledge = false
    @Option(help: ArgumentHelp("A recovery policy: default=ACTION, queue:NAME=ACTION or kind:KIND=ACTION.", valueName: "RULE"))
    var policy: [String] = []
    @Option(help: "Failed handler attempts before an operation is quarantined.") var maxAttempts = 3
    @Flag(help: "Show what recovery would do, and do nothing.") var dryRun = false
    @Flag(help: "List the operations recovery quarantined, and do nothing else.") var quarantined = false
    @Option(help: ArgumentHelp("Mark a quarantined operation recovered once dealt with.", valueName: "QUEUE/TICKET[.INDEX]"))
    var release: String?
    @Flag(help: "JSON output.") var json = false

    func policies() throws -> RecoveryPolicies {
        var policies = RecoveryPolicies()
        policies.maxAttempts = maxAttempts
        for rule in policy {
            guard let eq = rule.lastIndex(of: "="), let action = RecoveryAction(rawValue: String(rule[rule.index(after: eq)...])) else {
                throw ValidationError("--policy wants default=ACTION, queue:NAME=ACTION or kind:KIND=ACTION (ACTION: \(RecoveryAction.allCases.map(\.rawValue).joined(separator: ", "))), got '\(rule)'")
            }
            let target = rule[..<eq]
            if target == "default" { policies.defaultAction = action }
            else if target.hasPrefix("queue:") { policies.byQueue[String(target.dropFirst(6))] = action }
            else if target.hasPrefix("kind:") { policies.byKind[String(target.dropFirst(5))] = action }
            else { throw ValidationError("--policy target must be default, queue:NAME or kind:KIND, got '\(target)'") }
        }
        return policies
    }

    func validate() throws {
        _ = try policies()
        guard (1...1000).contains(maxAttempts) else { throw ValidationError("--max-attempts must be from 1 to 1000") }
    }

    func run() async throws {
        let pool = try await poolArguments.open()
        let outcome: Result<Void, any Error>
        do { outcome = .success(try await work(pool)) } catch { outcome = .failure(error) }
        await pool.close()
        try outcome.get()
    }

    private func work(_ pool: EtcdPool) async throws {
        if quarantined {
            let list = try await pool.quarantinedOperations()
            if json {
                FileHandle.standardOutput.write(try EtcdJSON.encoder.encode(list) + Data("\n".utf8))
                return
            }
            if list.isEmpty { print("recover: no quarantined operations in \(pool.address)") }
            for r in list { print("quarantined: \(Self.describe(r)): \(r.error ?? "policy quarantine")") }
            return
        }
        if let release {
            guard let slash = release.lastIndex(of: "/") else {
                throw PMLLError.invalidOptions(reason: "--release wants QUEUE/TICKET[.INDEX], got '\(release)'")
            }
            let parts = release[release.index(after: slash)...].split(separator: ".", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), let ticket = Int64(parts[0]), let index = parts.count == 2 ? Int(parts[1]) : 0 else {
                throw PMLLError.invalidOptions(reason: "--release wants QUEUE/TICKET[.INDEX], got '\(release)'")
            }
            let queue = String(release[..<slash])
            guard try await pool.releaseQuarantined(queue: queue, ticket: ticket, index: index) else {
                FileHandle.standardError.write(Data("pmll: no quarantined operation \(release)\n".utf8))
                throw ExitCode(1)
            }
            print("recover: released quarantined operation \(release)")
            return
        }
        var policies = try policies()
        var handlers: [String: EtcdRecoveryHandler] = [:]
        if acknowledge {
            policies.defaultAction = .abandon
            policies.byQueue = [:]
            policies.byKind = [:]
        }
        if let execHandler {
            handlers["exec"] = { record in
                var environment = ProcessInfo.processInfo.environment
                environment["PMLL_QUEUE"] = record.queue
                environment["PMLL_TICKET"] = String(record.ticket)
                environment["PMLL_ABANDONED_ARGV"] = String(decoding: record.payload, as: UTF8.self)
                let result = try await ChildProcess.run(["/bin/sh", "-c", execHandler], environment: environment)
                if result.status != 0 { throw EtcdQueueCommand.Exec.CommandFailed(status: result.status) }
            }
        } else if policies.action(queue: "", kind: "exec") == .retry || policies.byQueue.values.contains(.retry) {
            // Retrying a `pmll queue exec` runs its recorded command again.
            handlers["exec"] = { record in
                let argv = try JSONDecoder().decode([String].self, from: Data(record.payload))
                guard !argv.isEmpty else { throw EtcdQueueCommand.Exec.CommandFailed(status: 1) }
                let result = try await ChildProcess.run(argv, environment: ProcessInfo.processInfo.environment)
                if result.status != 0 { throw EtcdQueueCommand.Exec.CommandFailed(status: result.status) }
            }
        }
        let report = try await pool.recover(handlers: handlers, policies: policies, dryRun: dryRun)
        if json {
            FileHandle.standardOutput.write(try EtcdJSON.encoder.encode(report) + Data("\n".utf8))
        } else {
            if report.items.isEmpty { print("recover: no abandoned operations in \(pool.address)") }
            for item in report.items {
                let what = Self.describe(item.record)
                switch item.outcome {
                case .recovered: print("recovered: \(what)")
                case .noHandler: print("left (no handler for kind '\(item.record.kind)'): \(what)")
                case .handlerFailed(let error): print("handler failed (\(error)): \(what)")
                case .retried(nil): print("retried: \(what)")
                case .retried(let error?): print("retried, failed again (\(error)): \(what)")
                case .abandonedByPolicy: print("abandoned (policy): \(what)")
                case .quarantined(let reason): print("quarantined (\(reason)): \(what)")
                case .planned(let plan): print("would \(plan): \(what)")
                }
            }
        }
        if !report.failures.isEmpty { throw ExitCode(65) }
    }

    static func describe(_ r: EtcdOperationRecord) -> String {
        let ticket = r.index.map { "\(r.ticket).\($0)" } ?? "\(r.ticket)"
        return "queue '\(r.queue)' ticket \(ticket) kind '\(r.kind)' of pid \(r.pid) (\(r.command) on \(r.host)) \(String(decoding: r.payload, as: UTF8.self))"
    }
}
