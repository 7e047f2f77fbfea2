public import ArgumentParser
import Foundation
public import PMLLCore
import PMLLEtcd

/// `pmll-etcd`: the `pmll` commands that make sense on an etcd pool. `pmll` hands every
/// command whose pool is `etcd://...` to it (exec), so users type `pmll`; it is its own
/// executable so that the local `pmll` starts without the networking stack and Foundation.
@main
struct EtcdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmll",
        abstract: "PMLL locks and state on an etcd cluster (pool etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?ttl=SECONDS]).",
        discussion: """
            The pool is --pool URL, else $PMLL_POOL. Commands: lock, flock, queue, recover, state, status (Docs/Etcd.md).

            \(EtcdExit.summary)
            """,
        subcommands: [EtcdLockCommand.self, EtcdFlockCommand.self, EtcdQueueCommand.self, EtcdRecoverCommand.self, EtcdStateCommand.self, EtcdStatusCommand.self]
    )

    /// Local-pool commands that have no etcd form (yet): one clear line instead of
    /// ArgumentParser's "unexpected argument".
    static let localOnly: Set<String> = ["batch", "check", "metrics", "top", "backup", "restore", "config", "audit", "policy", "demo"]

    static func main() async {
        let arguments = CommandLine.arguments
        if arguments.count > 1, localOnly.contains(arguments[1]) {
            fail("'\(arguments[1])' is not available on etcd pools (available: lock, flock, queue, recover, state, status; Docs/Etcd.md)", status: 64)
        }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as PMLLError {
            fail(error.description, status: ExitStatus.code(for: error))
        } catch let code as ExitCode where code != .validationFailure {
            Foundation.exit(code.rawValue)
        } catch {
            let status = exitCode(for: error)
            if status == .success || error is CleanExit { exit(withError: error) }
            let message = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            let trimmed = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
            fail("\(trimmed) (see 'pmll --help')", status: 64)
        }
    }

    static func fail(_ message: String, status: Int32) -> Never {
        FileHandle.standardError.write(Data("pmll: \(message)\n".utf8))
        Foundation.exit(status)
    }
}

/// The exit statuses an etcd pool's commands can end with (the mapping is `ExitStatus`'s).
enum EtcdExit {
    static let summary = """
        Exit status: 0 ok; 1 state get: no value; 64 usage error; 65 a recovery handler failed; \
        66 bad pool address; 69 etcd unreachable; \
        75 timeout, conflict or lock lost (try again); 130 interrupted; \
        otherwise COMMAND's own status (128+N if it died of signal N).
        """
}

/// `--pool URL`, shared by every command.
struct EtcdPoolArguments: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Pool address (default: $PMLL_POOL).", valueName: "etcd://..."))
    var pool: String?

    func open() async throws -> EtcdPool { try await Self.open(pool) }

    /// `url`, else $PMLL_POOL (`pmll flock` has no --pool, as flock(1)).
    static func open(_ url: String?) async throws -> EtcdPool {
        guard let url = url ?? ProcessInfo.processInfo.environment["PMLL_POOL"] else {
            throw PMLLError.invalidPoolPath(path: "", reason: "no etcd pool given (--pool or $PMLL_POOL)")
        }
        return try await EtcdPool.open(url: url)
    }
}

extension LockLevel: ExpressibleByArgument {
    public static var allValueStrings: [String] { allCases.map(\.description) }
    public var defaultValueDescription: String { description }
}

/// The JSON output of every command: sorted keys, slashes as they are (lock and queue names).
enum EtcdJSON {
    static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}
