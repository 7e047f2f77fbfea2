import ArgumentParser
import Foundation
import PMLLCore
import PMLLEtcd

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
            let outcome = await runInterruptibly(closing: pool) {
                try await queue.execute(kind: "exec", payload: payload, timeout: timeout.map { .nanoseconds(Int64($0 * 1e9)) }) { op -> Int32 in
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
            let records: [EtcdOperationRecord]
            do { records = try await pool.queue(named: name).records() } catch {
                await pool.close()
                throw error
            }
            await pool.close()
            if json {
                struct Report: Encodable { var queue: String; var records: [EtcdOperationRecord] }
                FileHandle.standardOutput.write(try EtcdJSON.encoder.encode(Report(queue: name, records: records)) + Data("\n".utf8))
                return
            }
            print("queue \(name): \(records.count) record(s)")
            for r in records {
                let what = r.error ?? String(decoding: r.payload, as: UTF8.self)
                print("\(r.ticket)\t\(r.state.rawValue)\t\(r.kind)\tpid \(r.pid) (\(r.command) on \(r.host))\t\(what)")
            }
        }
    }
}

struct EtcdRecoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract: "Mark operations of dead processes abandoned and hand them to handlers.",
        discussion: "exec records go to --exec-handler COMMAND, run by /bin/sh -c with PMLL_QUEUE, PMLL_TICKET and PMLL_ABANDONED_ARGV; exit 0 marks the record recovered. Other kinds are listed and left.")
    @OptionGroup var poolArguments: EtcdPoolArguments
    @Option(help: "Handler for abandoned `queue exec` operations.") var execHandler: String?
    @Flag(help: "JSON output.") var json = false

    func run() async throws {
        let pool = try await poolArguments.open()
        var handlers: [String: @Sendable (EtcdOperationRecord) async throws -> Void] = [:]
        if let execHandler {
            handlers["exec"] = { record in
                var environment = ProcessInfo.processInfo.environment
                environment["PMLL_QUEUE"] = record.queue
                environment["PMLL_TICKET"] = String(record.ticket)
                environment["PMLL_ABANDONED_ARGV"] = String(decoding: record.payload, as: UTF8.self)
                let result = try await ChildProcess.run(["/bin/sh", "-c", execHandler], environment: environment)
                if result.status != 0 { throw EtcdQueueCommand.Exec.CommandFailed(status: result.status) }
            }
        }
        let report: EtcdRecoveryReport
        do { report = try await pool.recover(handlers: handlers) } catch {
            await pool.close()
            throw error
        }
        await pool.close()
        if json {
            FileHandle.standardOutput.write(try EtcdJSON.encoder.encode(report) + Data("\n".utf8))
        } else {
            for r in report.recovered { print("recovered: \(r.queue) ticket \(r.ticket) \(r.kind) (pid \(r.pid) on \(r.host))") }
            for r in report.unhandled { print("left (no handler for kind '\(r.kind)'): \(r.queue) ticket \(r.ticket)") }
            for f in report.failed { print("handler failed (\(f.error)): \(f.record.queue) ticket \(f.record.ticket)") }
        }
        if !report.failed.isEmpty { Foundation.exit(65) }
    }
}
