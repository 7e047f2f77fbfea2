import ArgumentParser
import Foundation
import PMLLCore
import PMLLEtcd

struct EtcdStateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state",
        abstract: "Read and write state keys of an etcd pool.",
        subcommands: [Get.self, Set.self, List.self]
    )

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print KEY's value (exit 1 if it has none, as on a local pool).")
        @OptionGroup var poolArguments: EtcdPoolArguments
        @Argument var key: String
        func run() async throws {
            let pool = try await poolArguments.open()
            let value = try await pool.value(for: key)
            await pool.close()
            guard let value else { EtcdCommand.fail("no value for key '\(key)'", status: 1) }
            FileHandle.standardOutput.write(Data(value) + Data("\n".utf8))
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set KEY to VALUE, optionally only while a lock acquisition still holds its lock.",
            discussion: "--fence NAME=TOKEN (repeatable) commits only if the acquisition of lock NAME with fencing token TOKEN (PMLL_FENCING_TOKEN under `pmll lock`) still holds it; otherwise nothing is written and the exit status is 75.")
        @OptionGroup var poolArguments: EtcdPoolArguments
        @Option(help: ArgumentHelp("Guard: lock NAME, fencing token TOKEN.", valueName: "NAME=TOKEN"))
        var fence: [String] = []
        @Argument var key: String
        @Argument var value: String

        func validate() throws { _ = try fences() }

        func fences() throws -> [EtcdFence] {
            try fence.map { item in
                guard let equals = item.lastIndex(of: "="), let token = Int64(item[item.index(after: equals)...]), token > 0 else {
                    throw ValidationError("--fence takes NAME=TOKEN with a positive token, not '\(item)'")
                }
                return EtcdFence(lock: String(item[..<equals]), token: token)
            }
        }

        func run() async throws {
            let pool = try await poolArguments.open()
            do {
                try await pool.transaction(fencedBy: try fences()) { tx in try tx.set(key, value) }
            } catch {
                await pool.close()
                throw error
            }
            await pool.close()
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the keys starting with PREFIX.")
        @OptionGroup var poolArguments: EtcdPoolArguments
        @Argument var prefix: String = ""
        func run() async throws {
            let pool = try await poolArguments.open()
            let keys = try await pool.stateKeys(prefix: prefix)
            await pool.close()
            for key in keys { print(key) }
        }
    }
}
